# Idempotent acks: remember the answer given to the last few (src, seq) pairs
# so a retried frame gets the same Ack/Nack again without its action running
# twice (a retry means our answer was lost, not that the sender wants more).
#
# Fixed-size rings of small ints: lookups and updates allocate nothing.
ACKED = 0  # answer stored for an Ack; any other value is a Nack code
UNSEEN = -1


class RecentFrames:
    def __init__(self, size: int = 8) -> None:
        self._src = [-1] * size
        self._seq = [0] * size
        self._answer = [ACKED] * size
        self._next = 0

    def answer(self, src: int, seq: int) -> int:
        # The answer given to (src, seq) before: ACKED or a nack code; UNSEEN if none.
        for i in range(len(self._src)):
            if self._src[i] == src and self._seq[i] == seq:
                return self._answer[i]
        return UNSEEN

    def remember(self, src: int, seq: int, answer: int = ACKED) -> None:
        # Records the answer to (src, seq), forgetting the oldest entry. Do not
        # record NACK_BUSY: a retry of a busy frame should be tried again.
        for i in range(len(self._src)):
            if self._src[i] == src and self._seq[i] == seq:
                self._answer[i] = answer
                return
        i = self._next
        self._src[i] = src
        self._seq[i] = seq
        self._answer[i] = answer
        self._next = (i + 1) % len(self._src)

    def clear(self) -> None:
        for i in range(len(self._src)):
            self._src[i] = -1
