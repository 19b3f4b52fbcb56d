"""One module per provider, each exposing a `Provider` whose `fetch()` returns normalized offers."""
