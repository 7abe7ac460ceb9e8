"""The names under the configured prefixes (`listing`), and the warm-up and listing loop (`warmup`)."""
