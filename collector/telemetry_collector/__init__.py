"""The reference collector: a small server compatible with telemetrics-backend's ingestion API.

It exists so that a user can run the whole system on one machine, and so that tests and
benchmarks deliver to a real server with real storage.  The contract it follows is the
reference backend's (POST /v2/collector, GET /api/records), minus that backend's bugs.

Pure cores: `rules` (the ingestion checks), `request` (an HTTP request or a JSON body to a
`Submission`), `query` (GET /api/records parameters), `reading` (a streamed answer in
bounded groups), `purge` (retention policy), `model` (the stored row and its JSON),
`limits` (every limit and timeout; token buckets, connection counts), `credentials` (read
tokens, scopes), `identity` (who a client certificate names), `dispatch.config` and
`dispatch.message` (routes, the JSON message every stream gets).  I/O shells: `store`
(SQLite or PostgreSQL), `writer` (group commit), `dispatch` (the router and one dispatcher
per destination), `auth` (credentials checked for any route), `app` (the Starlette
application), `metrics` (Prometheus, GET /metrics), `protocol` (uvicorn's HTTP protocol with
deadlines and caps), `server` (uvicorn), `workers` (several processes on one port), `main`
(the program), `launch` (starting one from another program), `tempdb` and `tempnats` (a
throwaway PostgreSQL server, a throwaway NATS server).
"""
