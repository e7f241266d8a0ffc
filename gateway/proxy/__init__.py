"""The inference pipeline: plan, forward, relay, and every rewrite of a body or an answer."""
