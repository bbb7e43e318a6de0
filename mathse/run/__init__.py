"""The run's bookkeeping: config, the output layout, storage and markers, fingerprints, records, usage, nodes."""
