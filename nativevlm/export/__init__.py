"""Writing trained models in other libraries' formats (`nativevlm export`)."""
