"""Builders of the desired child manifests (Job, PVC, Deployment, Service, PDB). Pure and deterministic."""
