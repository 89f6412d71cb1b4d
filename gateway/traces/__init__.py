"""Traces: one record per request (the trace store), OpenTelemetry spans (OTLP/HTTP), content capture.

sink.py     a worker's bounded queue, handed to the writer in batches over a Unix socket
writer.py   the trace writer process: the store thread and the OTLP export thread
store.py    the trace store protocol (insert, query, retention), its filters;  sqlite.py  the SQLite backend
rows.py     record -> row;  spans.py  record -> GenAI spans;  otlp.py  spans -> protobuf bytes
capture.py  what content is kept (none | metadata | full), redaction, truncation
context.py  W3C traceparent;  admin.py  /admin/traces;  cli.py  gateway traces export | tail
"""
