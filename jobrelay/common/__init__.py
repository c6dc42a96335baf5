"""Plumbing the worker (``jobrelay.actors``) and the facilitator (``jobrelay.facilitator``) share
and that is not protocol: the transport interface and its writer thread, the small HTTP server
behind /healthz, /metrics and the job API, and stdlib-to-loguru log routing.

Import the modules directly (``jobrelay.common.http``…); this package re-exports nothing.
"""
