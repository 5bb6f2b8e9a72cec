"""The coordinator role: job planning, secure-sum rounds, selection, estimation and sampling."""
