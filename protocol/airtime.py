# LoRa time on air (Semtech AN1200.13 / SX127x datasheet formula), in integer microseconds.
# Used by SPEC.md's table and by `gasguard bench air`.


def airtime_us(payload_len, sf, bw_hz=125000, cr=1, preamble=8, explicit_header=True, crc=True, ldro=None):
    """Time on air of one LoRa packet. cr=1 means 4/5. ldro defaults to on when a symbol is >= 16 ms."""
    tsym_us = (1 << sf) * 1000000 // bw_hz
    if ldro is None:
        ldro = tsym_us >= 16000
    de = 1 if ldro else 0
    ih = 0 if explicit_header else 1
    num = 8 * payload_len - 4 * sf + 28 + (16 if crc else 0) - 20 * ih
    den = 4 * (sf - 2 * de)
    n = -(-num // den) if num > 0 else 0
    payload_symbols = 8 + n * (cr + 4)
    # preamble: (n_preamble + 4.25) symbols
    return (preamble * 4 + 17) * tsym_us // 4 + payload_symbols * tsym_us


def max_payload_under(limit_us, sf, **kw):
    n = 0
    while n < 255 and airtime_us(n + 1, sf, **kw) <= limit_us:
        n += 1
    return n


def table(sizes=(19, 21, 23), sfs=(7, 11, 12)):
    rows = []
    for size in sizes:
        rows.append((size, [airtime_us(size, sf) / 1000.0 for sf in sfs]))
    return rows


if __name__ == "__main__":
    for size, times in table():
        print("%3d B  " % size + "  ".join("SF%-2d %7.1f ms" % (sf, t) for sf, t in zip((7, 11, 12), times)))
    print("largest payload under 1 s at SF12: %d B, at SF11: %d B"
          % (max_payload_under(1000000, 12), max_payload_under(1000000, 11)))
