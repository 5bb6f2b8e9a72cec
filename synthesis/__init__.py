"""Role-free synthesis core: schema, encoding, marginals, selection, estimation and sampling."""
