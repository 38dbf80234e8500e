"""Small helpers with no nativevlm dependencies, importable from every floor."""
