"""The TLS verification of the management API's client to the provider."""

import ssl

from gateway import system


def test_https_provider_verifies_with_ca_bundle() -> None:
    assert system._tls_verification("https://provider:8081", "") is True
    assert system._tls_verification("http://provider:8081", "HTTPS://logs") is True


def test_plain_http_provider_trusts_no_ca() -> None:
    verification = system._tls_verification("http://127.0.0.1:8081", "")

    assert isinstance(verification, ssl.SSLContext)
    assert verification.verify_mode == ssl.CERT_REQUIRED
    assert verification.check_hostname is True
    assert verification.get_ca_certs() == []
