"""pytest plugin of kd-audit (fixtures and the --kd-audit-report option); see audit.testing."""
