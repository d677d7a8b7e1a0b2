"""Study files shipped with ser-study (YAML, package data)."""
