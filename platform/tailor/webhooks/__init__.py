"""Webhooks: Tailor tells a team's registered URLs when a fine-tuning job succeeds, fails or is cancelled.

Deliveries are signed the Standard Webhooks way, so the openai SDK's `client.webhooks.unwrap` verifies
them (`signing`), go only to public addresses unless the operator allows private ones, and are retried
with backoff (`delivery`); both of those modules are Django-free. `models` and `services` keep the
endpoints and the delivery log, and the control worker sends and retries deliveries.
"""
