"""The HTTP surface beyond Eve's generated endpoints: errors, request checks, health, job routes."""
