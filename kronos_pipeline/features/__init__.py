"""Universe, feature and label builders. Point-in-time by construction; no Dagster here."""
