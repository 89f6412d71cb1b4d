"""The versioned prompt registry (SPEC section 4).

schema.py    the shape of a prompt file and of a pushed version (strict pydantic models)
template.py  `{{name}}` templates, parsed once into literal and variable parts
files.py     prompts/*.toml -> validated, compiled versions (used by `serve` and `check`)
registry.py  the immutable snapshot requests resolve against: file versions + pushed ones + labels
store.py     persistence of pushed versions and label moves (SQLite embedded, Redis shared)
service.py   the live holder: swaps snapshots, watches files and the store, pushes, moves labels
resolve.py   applies a prompt reference to a chat request body
runner.py    a version's test cases, run through a gateway, and their table
admin.py     the /admin/prompts endpoints
"""
