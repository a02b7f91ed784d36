"""The risk console (issue 15): a web page to see the control plane, halt, and reset with four
eyes. Needs the optional extra `killswitch-audit[console]` (starlette, uvicorn), imported only
when the console runs: `killswitch-audit console` (see docs/CONSOLE.md).

auth.py      operators file, scrypt hashes, sessions, CSRF, login rate limiting (stdlib)
resets.py    four-eyes pending resets that expire (stdlib)
app.py       the Starlette application: pages, JSON API, server-sent events
cli.py       `killswitch-audit console` and `console add-operator`
"""
