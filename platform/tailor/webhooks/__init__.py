"""Webhooks: Tailor tells a team's registered URLs when a fine-tuning job succeeds, fails or is cancelled.

Deliveries are signed the Standard Webhooks way, so the openai SDK's `client.webhooks.unwrap` verifies
them (`signing`), go only to public addresses unless the operator allows private ones, and are retried
with backoff (`delivery`). Both modules are Django-free.
"""
