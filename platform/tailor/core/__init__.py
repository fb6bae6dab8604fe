"""Cross-cutting pieces of the API: the error envelope, API-key authentication, cursor paging, health."""
