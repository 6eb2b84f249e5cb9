"""The accounts the `seeded` fixture writes once per session, which every end-to-end test can read."""

GOOD_ACCOUNTS = ("e2e-00001", "e2e-00002", "e2e-00003")
BAD_ACCOUNT = "bad-00001"
BAD_CONTACT_EMAIL = "planted-invalid-address"
