"""Real things the tests run against: a TLS mosquitto broker and a TCP proxy that can stall."""
