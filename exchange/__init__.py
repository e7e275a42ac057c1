"""The exchange: price-time matching engine, order-entry server, journal, accounts,
simulated traders and the CSV command line (``obpipe book``)."""
