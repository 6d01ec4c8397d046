"""A real local Kubernetes control plane with fake GPU nodes, built from Go modules and run as processes."""
