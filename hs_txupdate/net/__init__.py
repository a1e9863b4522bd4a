"""Network guard (pyroute2): captures the network before a run and checks it after."""
