"""The SQLite review store: photos, model findings, reviewer corrections (see ``db.store``)."""
