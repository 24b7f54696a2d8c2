"""The SQLite store of photos, findings and reviewer corrections (see the web-app issue).

Nothing lives here yet: the store is built with numbered migrations when the review app lands.
"""
