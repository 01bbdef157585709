"""Real deployments: `fedssl certs`, `fedssl gateway`, the loopback deployment and its processes."""
