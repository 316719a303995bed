import pytest

from fedgen.transforms.secagg import share_encryption
from fedgen.transforms.secagg.errors import ShareTamperedError
from fedgen.transforms.secagg.keys import (
    agree,
    deterministic_entropy,
    generate_private_key,
    public_bytes,
)


@pytest.fixture
def keys():
    entropy = deterministic_entropy(0)
    a, b = generate_private_key(entropy), generate_private_key(entropy)
    return a, b, entropy


def test_both_ends_agree_on_the_key_and_decrypt(keys):
    a, b, entropy = keys
    k_ab = agree(a, public_bytes(b), "share-encryption", 3, 1, 2)
    k_ba = agree(b, public_bytes(a), "share-encryption", 3, 2, 1)
    assert k_ab == k_ba
    assert k_ab != agree(a, public_bytes(b), "share-encryption", 4, 1, 2)
    ct = share_encryption.encrypt(k_ab, b"shares", 3, 1, 2, entropy)
    assert share_encryption.decrypt(k_ba, ct, 3, 1, 2) == b"shares"


@pytest.mark.parametrize(
    "change",
    ["flip_bit", "other_round", "swapped_sender", "other_receiver"],
)
def test_tampering_swapping_and_replaying_are_detected(keys, change):
    # Prepare: same key throughout, so only the associated data / tag can catch it
    a, b, entropy = keys
    key = agree(a, public_bytes(b), "share-encryption", 3, 1, 2)
    ct = share_encryption.encrypt(key, b"shares", 3, 1, 2, entropy)
    round, sender, receiver = 3, 1, 2
    if change == "flip_bit":
        ct = ct[:-1] + bytes([ct[-1] ^ 1])
    elif change == "other_round":
        round = 4
    elif change == "swapped_sender":
        sender, receiver = 2, 1
    else:
        receiver = 9
    # Execute / Assert
    with pytest.raises(ShareTamperedError, match="failed authentication"):
        share_encryption.decrypt(key, ct, round, sender, receiver)
