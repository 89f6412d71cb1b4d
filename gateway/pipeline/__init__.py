"""The request's journey, one small stage per module; `gateway.app.Gateway.proxy` runs them in order:

auth -> body -> admission (model known, allowed) -> route (pick a deployment) -> dispatch -> record
"""
