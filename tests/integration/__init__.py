"""Integration tests: the node, the CLI and the viewer against real peers (marker ``integration``)."""
