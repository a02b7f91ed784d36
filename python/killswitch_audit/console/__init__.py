"""The risk console (issue 15): a web page to see the control plane, halt, and reset with four
eyes. Needs the optional extra `killswitch-audit[console]` (starlette, uvicorn), imported only
when the console runs: `killswitch-audit console` (see docs/CONSOLE.md).

auth.py      operators file, scrypt hashes, sessions, CSRF, login rate limiting (stdlib)
resets.py    four-eyes pending resets that expire (stdlib)
app.py       build_app: the Starlette application (routes, lifespan)
context.py   Console: the state every endpoint shares, session cookie, headers, form bodies
live.py      LiveState: what the page shows, rebuilt from the control plane on a change
forms.py     form field validation (scope, reason), per-field errors
pages.py     login, logout, the page and its static files
api.py       JSON reads (/api/me, /api/state) and the server-sent-events stream
commands.py  halt and the four-eyes reset (request, approve, cancel), each behind `action`
journal.py   the console's own audit log of its events
nats_watch.py  wakes the poller on a NATS latch change
cli.py       `killswitch-audit console` and `console add-operator`
"""
