"""One module per provider, each exposing a `Provider` whose `fetch()` returns normalized offers,
and one API client module per provider (`<name>_api`) that both the price readers and
the launch backends (planner.run.backends) call. `registry` declares each provider once; every
factory (planner.run.pricebook.build_providers, planner.run.launching.build_backends) iterates it.
"""
