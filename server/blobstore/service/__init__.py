"""The server process: configuration, start-up, admission limits and graceful stop."""
