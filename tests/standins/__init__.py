"""Local stand-ins for cloud APIs (no cloud is reachable from the test machines)."""
