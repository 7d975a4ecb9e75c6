"""The marketer's console: server-rendered pages over a workspace (`persona console -w DIR`)."""
