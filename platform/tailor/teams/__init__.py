"""Teams, their members and their API keys: who may call the API and on whose behalf."""
