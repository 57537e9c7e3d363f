"""The terms gate and who the caller is: identities, signed receipts, the terms, the privacy notice, recorded consent."""
