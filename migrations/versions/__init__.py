"""Journal schema revisions. Additive only: an older hs-tx must still open a newer journal."""
