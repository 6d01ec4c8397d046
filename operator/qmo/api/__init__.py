"""The CRDs as pydantic models (spec and status). Pure: the CRD YAML in ``crds/`` is generated from here."""
