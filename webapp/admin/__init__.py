"""The administrators' views: the audit log and the visitors' ratings."""
