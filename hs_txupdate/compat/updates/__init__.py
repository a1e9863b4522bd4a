"""HOMESERVER `updates` package, as seen by modules run by hs-tx."""
