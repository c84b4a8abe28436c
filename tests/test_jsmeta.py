from workers.jsmeta import AckInfo, ack_info


def test_v1_ack_subject() -> None:
    info = ack_info("$JS.ACK.jetserve-req-m.online.3.17.9.1700000000123456789.42")
    assert info == AckInfo(3, 1700000000.123456789, 42)


def test_v2_ack_subject_with_domain_and_account() -> None:
    reply = "$JS.ACK.hub.ACCHASH.jetserve-req-m.online.1.5.5.1700000000000000000.0.token"
    assert ack_info(reply) == AckInfo(1, 1700000000.0, 0)


def test_not_an_ack_subject() -> None:
    assert ack_info(None) is None
    assert ack_info("_INBOX.abc") is None
    assert ack_info("$JS.ACK.too.short") is None
    assert ack_info("$JS.ACK.s.c.x.5.5.1.0") is None
