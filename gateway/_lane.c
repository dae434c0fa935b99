/* The reading lane in C (issue 17): gateway/fastlane.py's ReadingLane.take, the same checks, the same changes and
 * the same entry text, without a Python object per step of a reading.
 *
 * fastlane.py stays the reference and the fallback where this module is not built; tests/test_fastlane.py holds
 * this lane, the Python lane and the general path equal frame by frame, and tests/test_lane_c.py checks the
 * SHA-256 and HMAC below against hashlib and hmac.
 *
 * What is written here and not taken from a library, and why:
 * - SHA-256 (FIPS 180-4) and HMAC (RFC 2104). The module must build on a fresh machine with gcc and Python's
 *   headers alone (no libssl-dev), and a MIC is two compressions of one block each from a key's precomputed pads:
 *   OpenSSL's EVP interface costs more in set-up per call than that. On x86-64 CPUs with the SHA extensions the
 *   compression uses them (chosen at import by CPUID), else the portable C.
 * Facts of the protocol and of the entry (value ranges, the texts of gas, battery, state and pressure values,
 * pressure_from_wire, Device.active) are not repeated here: the Python side hands them in at construction or
 * this module calls it. What is repeated is the frame layout of a reading, which fastlane.py also unpacks.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>     /* PyMemberDef, T_OBJECT_EX: the slots of ReplayState and Presence (slots_t) */
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_SHANI_BUILD 1
#endif

/* ---- SHA-256 -------------------------------------------------------------------------------------------- */

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static const uint32_t H256[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static inline uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

static void block_portable(uint32_t st[8], const uint8_t *p) {
    uint32_t w[64], a, b, c, d, e, f, g, h;
    int i;
    for (i = 0; i < 16; i++) w[i] = be32(p + 4 * i);
    for (i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = st[0]; b = st[1]; c = st[2]; d = st[3]; e = st[4]; f = st[5]; g = st[6]; h = st[7];
    for (i = 0; i < 64; i++) {
        uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    st[0] += a; st[1] += b; st[2] += c; st[3] += d; st[4] += e; st[5] += f; st[6] += g; st[7] += h;
}

#ifdef HAVE_SHANI_BUILD
/* The SHA extensions' compression: the message schedule four words at a time (msg1/msg2) and two rounds per
 * sha256rnds2, the state kept as ABEF/CDGH as the instructions want it. */
__attribute__((target("sha,sse4.1,ssse3"))) static void block_shani(uint32_t st[8], const uint8_t *p) {
    const __m128i mask = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i tmp = _mm_loadu_si128((const __m128i *)&st[0]);
    __m128i s1 = _mm_loadu_si128((const __m128i *)&st[4]);
    tmp = _mm_shuffle_epi32(tmp, 0xB1);          /* CDAB */
    s1 = _mm_shuffle_epi32(s1, 0x1B);            /* EFGH */
    __m128i s0 = _mm_alignr_epi8(tmp, s1, 8);    /* ABEF */
    s1 = _mm_blend_epi16(s1, tmp, 0xF0);         /* CDGH */
    const __m128i abef = s0, cdgh = s1;
    __m128i m[4];
    for (int i = 0; i < 16; i++) {
        __m128i cur;
        if (i < 4) {
            cur = m[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * i)), mask);
        } else {
            __m128i x = _mm_sha256msg1_epu32(m[i & 3], m[(i + 1) & 3]);
            x = _mm_add_epi32(x, _mm_alignr_epi8(m[(i + 3) & 3], m[(i + 2) & 3], 4));
            cur = m[i & 3] = _mm_sha256msg2_epu32(x, m[(i + 3) & 3]);
        }
        __m128i msg = _mm_add_epi32(cur, _mm_loadu_si128((const __m128i *)&K256[4 * i]));
        s1 = _mm_sha256rnds2_epu32(s1, s0, msg);
        msg = _mm_shuffle_epi32(msg, 0x0E);
        s0 = _mm_sha256rnds2_epu32(s0, s1, msg);
    }
    s0 = _mm_add_epi32(s0, abef);
    s1 = _mm_add_epi32(s1, cdgh);
    tmp = _mm_shuffle_epi32(s0, 0x1B);           /* FEBA */
    s1 = _mm_shuffle_epi32(s1, 0xB1);            /* DCHG */
    s0 = _mm_blend_epi16(tmp, s1, 0xF0);         /* DCBA */
    s1 = _mm_alignr_epi8(s1, tmp, 8);            /* HGFE */
    _mm_storeu_si128((__m128i *)&st[0], s0);
    _mm_storeu_si128((__m128i *)&st[4], s1);
}

static int cpu_has_shani(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    if (!(c & bit_SSSE3) || !(c & bit_SSE4_1)) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b & (1u << 29)) != 0;    /* CPUID.(EAX=7,ECX=0):EBX.SHA[bit 29] */
}
#endif

static void (*sha_block)(uint32_t st[8], const uint8_t *p) = block_portable;
static int sha_shani_available = 0;

/* The state after `prefix` whole blocks (prefix_len bytes, a multiple of 64) has `st`; hash `msg` and finish. */
static void sha_finish(uint32_t st[8], uint64_t prefix_len, const uint8_t *msg, size_t len, uint8_t out[32]) {
    uint8_t blk[64];
    uint64_t bits = (prefix_len + len) * 8;
    while (len >= 64) {
        sha_block(st, msg);
        msg += 64;
        len -= 64;
    }
    memcpy(blk, msg, len);
    blk[len] = 0x80;
    if (len >= 56) {
        memset(blk + len + 1, 0, 63 - len);
        sha_block(st, blk);
        memset(blk, 0, 56);
    } else {
        memset(blk + len + 1, 0, 55 - len);
    }
    for (int i = 0; i < 8; i++) blk[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
    sha_block(st, blk);
    for (int i = 0; i < 8; i++) put_be32(out + 4 * i, st[i]);
}

/* HMAC-SHA256 pads of a key: the states after its inner and outer padded blocks (RFC 2104), 2 x 8 words. */
static void hmac_pads(const uint8_t *key, size_t klen, uint32_t pads[16]) {
    uint8_t k[64], blk[64];
    memset(k, 0, 64);
    if (klen > 64) {
        uint32_t st[8];
        memcpy(st, H256, sizeof st);
        sha_finish(st, 0, key, klen, k);
    } else {
        memcpy(k, key, klen);
    }
    for (int i = 0; i < 64; i++) blk[i] = k[i] ^ 0x36;
    memcpy(pads, H256, 32);
    sha_block(pads, blk);
    for (int i = 0; i < 64; i++) blk[i] = k[i] ^ 0x5c;
    memcpy(pads + 8, H256, 32);
    sha_block(pads + 8, blk);
}

static void hmac_from_pads(const uint32_t pads[16], const uint8_t *msg, size_t len, uint8_t out[32]) {
    uint32_t st[8];
    uint8_t inner[32];
    memcpy(st, pads, 32);
    sha_finish(st, 64, msg, len, inner);
    memcpy(st, pads + 8, 32);
    sha_finish(st, 64, inner, 32, out);
}

/* Each key's pads, made once (as verify.hmac_sha256 keeps them): key bytes -> 64 bytes of state. Bounded: past
 * PADS_MAX keys (verify.PADS_MAX, handed in) it starts over. */
static PyObject *pads_cache = NULL;
static Py_ssize_t pads_max = 65536;

static const uint32_t *pads_of(PyObject *key) {
    PyObject *p = PyDict_GetItemWithError(pads_cache, key);
    if (p == NULL) {
        if (PyErr_Occurred()) return NULL;
        uint32_t pads[16];
        hmac_pads((const uint8_t *)PyBytes_AS_STRING(key), (size_t)PyBytes_GET_SIZE(key), pads);
        if (PyDict_GET_SIZE(pads_cache) >= pads_max) PyDict_Clear(pads_cache);
        p = PyBytes_FromStringAndSize((const char *)pads, sizeof pads);
        if (p == NULL) return NULL;
        int r = PyDict_SetItem(pads_cache, key, p);
        Py_DECREF(p);         /* the dict holds it */
        if (r < 0) return NULL;
    }
    return (const uint32_t *)PyBytes_AS_STRING(p);
}

static PyObject *py_hmac_sha256(PyObject *self, PyObject *args) {
    Py_buffer key, msg;
    if (!PyArg_ParseTuple(args, "y*y*", &key, &msg)) return NULL;
    uint32_t pads[16];
    uint8_t out[32];
    hmac_pads(key.buf, (size_t)key.len, pads);
    hmac_from_pads(pads, msg.buf, (size_t)msg.len, out);
    PyBuffer_Release(&key);
    PyBuffer_Release(&msg);
    return PyBytes_FromStringAndSize((const char *)out, 32);
}

static PyObject *py_sha256(PyObject *self, PyObject *args) {
    Py_buffer msg;
    if (!PyArg_ParseTuple(args, "y*", &msg)) return NULL;
    uint32_t st[8];
    uint8_t out[32];
    memcpy(st, H256, sizeof st);
    sha_finish(st, 0, msg.buf, (size_t)msg.len, out);
    PyBuffer_Release(&msg);
    return PyBytes_FromStringAndSize((const char *)out, 32);
}

static PyObject *py_use_shani(PyObject *self, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
#ifdef HAVE_SHANI_BUILD
    sha_block = (on && sha_shani_available) ? block_shani : block_portable;
    return PyBool_FromLong(sha_block == block_shani);
#else
    return PyBool_FromLong(0);
#endif
}

/* ---- the lane --------------------------------------------------------------------------------------------- */

/* The reading's layout, which sizes this module's buffers and tables: Lane() refuses to start when the Python
 * side's differs (a protocol change needs this file changed and rebuilt). The counter window comes in as values. */
#define READING_LEN 19        /* fastlane/verify: HEAD_LEN 7 + 6 + MIC_LEN 6; + 2 with the inlet pressure */
#define MIC_LEN 6
#define NA16 0xFFFF
#define REC 14                /* verify._REC: fcnt u32 LE + MIC + accept second u32 LE */

static PyObject *s_first_heard, *s_state, *s_registry, *s_states, *s_devices, *s_cached, *s_active, *s_move_to_end, *s_up, *s_tokens, *s_t_bucket, *s_recent, *s_online,
    *s_sbyte, *s_silence, *s_pub, *s_last_seen, *s_r_fcnt, *s_r_gas, *s_r_pressure, *s_r_battery, *s_r_state,
    *s_r_inlet, *s_r_t, *s_key, *s_burst, *s_rate;

/* The slotted attributes a reading reads and writes (verify.ReplayState, presence.Presence), by their slot's
 * offset in the object instead of PyObject_GetAttr/SetAttr: a reading made ~25 of those, each a type lookup and a
 * descriptor call (perf on the gateway: PyMember_GetOne, _PyType_Lookup and the generic attribute calls ~8 % of
 * its CPU, not all of it the lane's). The offsets are the classes' own member descriptors', read when the lane
 * first meets the class (resolve): no layout is repeated here. A class whose attribute is not a plain writable
 * slot, or that overrides attribute access, goes through PyObject_GetAttr/SetAttr as before, and so does an unset
 * slot (its AttributeError). */
enum { RS_UP, RS_TOKENS, RS_T_BUCKET, RS_RECENT, RS_N };
enum { PR_ONLINE, PR_SBYTE, PR_SILENCE, PR_PUB, PR_LAST_SEEN, PR_R_FCNT, PR_R_GAS, PR_R_PRESSURE, PR_R_BATTERY,
       PR_R_STATE, PR_R_INLET, PR_R_T, PR_N };
static PyObject **const rs_names[RS_N] = {&s_up, &s_tokens, &s_t_bucket, &s_recent};
static PyObject **const pr_names[PR_N] = {&s_online, &s_sbyte, &s_silence, &s_pub, &s_last_seen, &s_r_fcnt, &s_r_gas,
                                          &s_r_pressure, &s_r_battery, &s_r_state, &s_r_inlet, &s_r_t};

typedef struct {
    PyObject *type;             /* the class the offsets are of (a strong reference), NULL: none met yet */
    int direct;                 /* 1: off[] holds that class's slot offsets; 0: the generic attribute calls */
    int n;
    PyObject **const *names;
    Py_ssize_t off[PR_N];
} slots_t;

static void resolve(slots_t *s, PyTypeObject *tp) {
    Py_XSETREF(s->type, Py_NewRef((PyObject *)tp));
    s->direct = 0;
    if (tp->tp_getattro != PyObject_GenericGetAttr || tp->tp_setattro != PyObject_GenericSetAttr) return;
    for (int i = 0; i < s->n; i++) {
        PyObject *d = PyObject_GetAttr((PyObject *)tp, *s->names[i]);   /* the class's attribute: its descriptor */
        if (d == NULL) {
            PyErr_Clear();
            return;
        }
        int ok = Py_IS_TYPE(d, &PyMemberDescr_Type)
                 && ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX
                 && !(((PyMemberDescrObject *)d)->d_member->flags & READONLY);
        if (ok) s->off[i] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
        if (!ok) return;
    }
    s->direct = 1;
}

/* o.<names[i]>: a new reference, or NULL with the exception set */
static inline PyObject *sget(slots_t *s, PyObject *o, int i) {
    if ((PyObject *)Py_TYPE(o) != s->type) resolve(s, Py_TYPE(o));
    if (s->direct) {
        PyObject *v = *(PyObject **)((char *)o + s->off[i]);
        if (v != NULL) return Py_NewRef(v);
    }
    return PyObject_GetAttr(o, *s->names[i]);
}

/* o.<names[i]> = v: 0, or -1 with the exception set */
static inline int sset(slots_t *s, PyObject *o, int i, PyObject *v) {
    if ((PyObject *)Py_TYPE(o) != s->type) resolve(s, Py_TYPE(o));
    if (s->direct) {
        PyObject **at = (PyObject **)((char *)o + s->off[i]), *old = *at;
        *at = Py_NewRef(v);
        Py_XDECREF(old);
        return 0;
    }
    return PyObject_SetAttr(o, *s->names[i], v);
}

typedef struct {
    const char *s;
    Py_ssize_t n;
} txt_t;

typedef struct {
    PyObject_HEAD
    PyObject *verifier, *table;   /* the Verifier and the PresenceTable: what they hold (states, the registry's
                                   * LRU, devices) is looked up on every call, as the Python lane does, so an
                                   * object replaced later is never read stale */
    PyObject *pfn;              /* pressure_from_wire */
    PyObject *ptxt_fn;          /* fastlane._pressure_txt */
    PyObject *holds;            /* the str objects the texts below point into */
    txt_t gas[NA16 + 1];        /* JSON text of a wire gas value (fastlane._GAS_TXT), n = -1: not a valid value */
    txt_t bat[256];             /* ... battery (_BATTERY_TXT) */
    txt_t state[256];           /* ... state byte (_STATE_TXT) */
    PyObject **pval;            /* wire pressure -> pressure_from_wire(u), made on first sight (65,536 at most) */
    PyObject **ptxt;            /* wire pressure -> its JSON text */
    unsigned long long max_gap, max_fcnt;   /* SPEC 4's counter window (protocol.const MAX_GAP, MAX_FCNT) */
    int hdr;                    /* a reading's header byte; | inlet_flag with the inlet pressure */
    int inlet_flag;
    Py_ssize_t recent_bytes;    /* RECENT * REC */
    uint8_t b0head[4];          /* SPEC 5: B0 'G' 'G' version direction */
    slots_t rs, pr;             /* ReplayState's and Presence's slots */
} Lane;


static int fill_txt(Lane *self, PyObject *map, txt_t *out, Py_ssize_t size, const char *what) {
    /* map: a dict int -> str, or a list of str; every text must be ASCII (orjson's output is) */
    for (Py_ssize_t i = 0; i < size; i++) out[i].n = -1;
    if (PyList_Check(map)) {
        if (PyList_GET_SIZE(map) != size) {
            PyErr_Format(PyExc_ValueError, "%s: %zd texts, not %zd", what, PyList_GET_SIZE(map), size);
            return -1;
        }
        for (Py_ssize_t i = 0; i < size; i++) {
            PyObject *v = PyList_GET_ITEM(map, i);
            if (!PyUnicode_Check(v) || !PyUnicode_IS_ASCII(v)) {
                PyErr_Format(PyExc_ValueError, "%s: not ASCII text", what);
                return -1;
            }
            if (PyList_Append(self->holds, v) < 0) return -1;
            out[i].s = (const char *)PyUnicode_1BYTE_DATA(v);
            out[i].n = PyUnicode_GET_LENGTH(v);
        }
        return 0;
    }
    if (!PyDict_Check(map)) {
        PyErr_Format(PyExc_TypeError, "%s: a dict or a list", what);
        return -1;
    }
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    while (PyDict_Next(map, &pos, &k, &v)) {
        long i = PyLong_AsLong(k);
        if (i == -1 && PyErr_Occurred()) return -1;
        if (i < 0 || i >= size || !PyUnicode_Check(v) || !PyUnicode_IS_ASCII(v)) {
            PyErr_Format(PyExc_ValueError, "%s: key %ld or its text out of range", what, i);
            return -1;
        }
        if (PyList_Append(self->holds, v) < 0) return -1;
        out[i].s = (const char *)PyUnicode_1BYTE_DATA(v);
        out[i].n = PyUnicode_GET_LENGTH(v);
    }
    return 0;
}

static int Lane_init(Lane *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"verifier", "presence", "gas_txt", "battery_txt", "state_txt", "pressure_from_wire",
                            "pressure_txt", "header", "inlet_flag", "recent", "b0_head", "pads_max", "layout",
                            "max_gap", "max_fcnt", NULL};
    PyObject *verifier, *presence, *gas, *bat, *state, *pfn, *ptxt_fn;
    int hdr, inlet, recent, len, mic, na, rec;
    Py_buffer b0;
    Py_ssize_t pmax;
    unsigned long long gap, fmax;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOOiiiy*n(iiii)KK", names, &verifier, &presence, &gas, &bat,
                                     &state, &pfn, &ptxt_fn, &hdr, &inlet, &recent, &b0, &pmax, &len, &mic, &na, &rec,
                                     &gap, &fmax))
        return -1;
    if (len != READING_LEN || mic != MIC_LEN || na != NA16 || rec != REC) {
        PyBuffer_Release(&b0);
        PyErr_Format(PyExc_ValueError, "gateway/_lane.c was built for a reading of %d bytes, a %d-byte MIC, "
                     "no value %d and %d-byte replay records, not %d/%d/%d/%d: change it to the protocol's, then "
                     "reinstall the package", READING_LEN, MIC_LEN, NA16, REC, len, mic, na, rec);
        return -1;
    }
    self->max_gap = gap;
    self->max_fcnt = fmax;
    self->rs.n = RS_N;
    self->rs.names = rs_names;
    self->pr.n = PR_N;
    self->pr.names = pr_names;
    if (b0.len != 4) {
        PyBuffer_Release(&b0);
        PyErr_SetString(PyExc_ValueError, "b0_head: 4 bytes");
        return -1;
    }
    memcpy(self->b0head, b0.buf, 4);
    PyBuffer_Release(&b0);
    pads_max = pmax;
    self->hdr = hdr;
    self->inlet_flag = inlet;
    self->recent_bytes = (Py_ssize_t)recent * REC;
    Py_XSETREF(self->verifier, Py_NewRef(verifier));
    Py_XSETREF(self->table, Py_NewRef(presence));
    Py_XSETREF(self->pfn, Py_NewRef(pfn));
    Py_XSETREF(self->ptxt_fn, Py_NewRef(ptxt_fn));
    Py_XSETREF(self->holds, PyList_New(0));
    if (!self->holds) return -1;
    if (fill_txt(self, gas, self->gas, NA16 + 1, "gas_txt") < 0 || fill_txt(self, bat, self->bat, 256, "battery_txt") < 0
        || fill_txt(self, state, self->state, 256, "state_txt") < 0)
        return -1;
    if (self->pval == NULL) {
        self->pval = PyMem_Calloc(NA16 + 1, sizeof(PyObject *));
        self->ptxt = PyMem_Calloc(NA16 + 1, sizeof(PyObject *));
        if (!self->pval || !self->ptxt) {
            PyErr_NoMemory();
            return -1;
        }
    }
    return 0;
}

static void Lane_dealloc(Lane *self) {
    if (self->pval) {
        for (int i = 0; i <= NA16; i++) {
            Py_XDECREF(self->pval[i]);
            Py_XDECREF(self->ptxt[i]);
        }
        PyMem_Free(self->pval);
        PyMem_Free(self->ptxt);
    }
    Py_XDECREF(self->verifier);
    Py_XDECREF(self->table);
    Py_XDECREF(self->pfn);
    Py_XDECREF(self->ptxt_fn);
    Py_XDECREF(self->holds);
    Py_XDECREF(self->rs.type);
    Py_XDECREF(self->pr.type);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* pressure_from_wire(u) and its JSON text, each made once per wire value by the Python side's functions */
static int pressure_of(Lane *self, unsigned u, PyObject **val, PyObject **txt) {
    if (self->pval[u] == NULL) {
        PyObject *pu = PyLong_FromUnsignedLong(u);
        if (pu == NULL) return -1;
        PyObject *v = PyObject_CallOneArg(self->pfn, pu);
        PyObject *t = v ? PyObject_CallOneArg(self->ptxt_fn, pu) : NULL;
        Py_DECREF(pu);
        if (t == NULL) {
            Py_XDECREF(v);
            return -1;
        }
        if (!PyUnicode_Check(t) || !PyUnicode_IS_ASCII(t)) {
            Py_DECREF(v);
            Py_DECREF(t);
            PyErr_SetString(PyExc_ValueError, "pressure_txt: not ASCII text");
            return -1;
        }
        self->pval[u] = v;
        self->ptxt[u] = t;
    }
    *val = self->pval[u];
    *txt = self->ptxt[u];
    return 0;
}

/* a number (a float, or an int as Python's arithmetic would take it): 0 and *out set; 1: neither (the caller leaves
 * the frame to the general path) */
static int as_float(PyObject *v, double *out) {
    if (PyFloat_CheckExact(v)) *out = PyFloat_AS_DOUBLE(v);
    else if (PyLong_CheckExact(v)) {
        *out = PyLong_AsDouble(v);
        if (*out == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return 1;
        }
    } else return 1;
    return 0;
}

/* as_float of a new reference from a getter (PyObject_GetAttr, sget), which it releases: 0, 1, or -1 when the
 * getter failed (its exception set) */
static int float_of(PyObject *v, double *out) {
    if (v == NULL) return -1;
    int r = as_float(v, out);
    Py_DECREF(v);
    return r;
}

/* the truth of a new reference from a getter, which it releases: 1, 0, or -1 with the exception set */
static int truth_of(PyObject *v) {
    if (v == NULL) return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* What every reading of a call looks up on the verifier and the presence table, looked up once a call (take,
 * or run's whole run of frames): the registry's LRU and its move_to_end, the replay states, the presences, the
 * rate bucket's burst and rate. Nothing a call runs (flush, published, first_heard, Verifier.state) replaces
 * them; a later call looks them up again. */
typedef struct {
    PyObject *cached, *move_to_end, *states, *devices;
    double burst, rate;
} ctx_t;

static void ctx_close(ctx_t *c) {
    Py_CLEAR(c->cached);
    Py_CLEAR(c->move_to_end);
    Py_CLEAR(c->states);
    Py_CLEAR(c->devices);
}

/* 0: ready; 1: no frame is this lane's (an attribute is not what the lane reads: the general path's); -1: an error.
 * ctx_close() after it in every case. */
static int ctx_open(Lane *self, ctx_t *c) {
    memset(c, 0, sizeof *c);
    PyObject *registry = PyObject_GetAttr(self->verifier, s_registry);
    if (registry == NULL) return -1;
    c->cached = PyObject_GetAttr(registry, s_cached);      /* the LRU, kept fresh by the group's prefetch */
    Py_DECREF(registry);
    if (c->cached == NULL) return -1;
    if (!PyDict_Check(c->cached)) return 1;
    if ((c->move_to_end = PyObject_GetAttr(c->cached, s_move_to_end)) == NULL) return -1;
    if ((c->states = PyObject_GetAttr(self->verifier, s_states)) == NULL) return -1;
    if (!PyDict_Check(c->states)) return 1;
    if ((c->devices = PyObject_GetAttr(self->table, s_devices)) == NULL) return -1;
    if (!PyDict_Check(c->devices)) return 1;
    int k = float_of(PyObject_GetAttr(self->verifier, s_burst), &c->burst);
    return k != 0 ? k : float_of(PyObject_GetAttr(self->verifier, s_rate), &c->rate);
}

static inline char *put(char *w, const char *s, Py_ssize_t n) {
    memcpy(w, s, (size_t)n);
    return w + n;
}

#define LIT(w, s) put((w), (s), (Py_ssize_t)(sizeof(s) - 1))

/* `v` in decimal at `w` (no terminator): its length. snprintf("%llu") costs ~0.2-0.3 us a call in glibc, and a
 * reading's id and entry wrote two (py-spy --native on the gateway: a sixth of the lane's time) */
static int put_dec(char *w, unsigned long long v) {
    char t[20];
    int n = 0;
    do {
        t[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (int i = 0; i < n; i++) w[i] = t[n - 1 - i];
    return n;
}

/* `v` as 8 lowercase hex digits at `w`, as "%08x" */
static void put_hex8(char *w, uint32_t v) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 7; i >= 0; i--, v >>= 4) w[i] = digits[v & 0xF];
}

/* take(raw, now, shared) -> (dev, fcnt, previous counter, msg id, entry JSON, routine, due) or None, as
 * fastlane.ReadingLane.take (due: the state byte when the retained state falls due, else None). None: not this
 * lane's frame, and nothing was changed (but the registry LRU's order of a known, active device, as the Python
 * lane leaves it). */
static PyObject *take_one(Lane *self, ctx_t *c, PyObject *raw, PyObject *now_o, PyObject *shared) {
    if (!PyBytes_CheckExact(raw) || !PyFloat_CheckExact(now_o) || !PyTuple_CheckExact(shared)
        || PyTuple_GET_SIZE(shared) != 4)
        Py_RETURN_NONE;
    PyObject *prefix = PyTuple_GET_ITEM(shared, 0), *t_txt = PyTuple_GET_ITEM(shared, 1),
             *t_rec = PyTuple_GET_ITEM(shared, 2), *rx_txt = PyTuple_GET_ITEM(shared, 3);
    if (!PyUnicode_CheckExact(prefix) || !PyUnicode_IS_ASCII(prefix) || !PyUnicode_CheckExact(t_txt)
        || !PyUnicode_IS_ASCII(t_txt) || !PyUnicode_CheckExact(rx_txt) || !PyUnicode_IS_ASCII(rx_txt)
        || !PyBytes_CheckExact(t_rec) || PyBytes_GET_SIZE(t_rec) != 4)
        Py_RETURN_NONE;     /* the Python lane writes what these are; the C one only ASCII text */
    const uint8_t *r = (const uint8_t *)PyBytes_AS_STRING(raw);
    Py_ssize_t n = PyBytes_GET_SIZE(raw);
    int inlet;
    if (n == READING_LEN && r[0] == self->hdr) inlet = 0;
    else if (n == READING_LEN + 2 && r[0] == (self->hdr | self->inlet_flag)) inlet = 1;
    else Py_RETURN_NONE;
    uint32_t dev = be32(r + 1);
    unsigned c16 = ((unsigned)r[5] << 8) | r[6], g = ((unsigned)r[7] << 8) | r[8], p = ((unsigned)r[9] << 8) | r[10];
    unsigned bat = r[11], st = r[12], iw = inlet ? (((unsigned)r[13] << 8) | r[14]) : 0;
    if (self->gas[g].n < 0 || self->bat[bat].n < 0 || dev == 0 || dev == 0xFFFFFFFFu) Py_RETURN_NONE;

    PyObject *out = NULL, *dev_o = NULL, *device = NULL, *key = NULL, *up_o = NULL,
             *fcnt_o = NULL, *recent_o = NULL, *newrec = NULL, *tok_new = NULL, *mid = NULL,
             *js = NULL, *gas_o = NULL, *bat_o = NULL, *st_o = NULL;
    dev_o = PyLong_FromUnsignedLong(dev);
    if (dev_o == NULL) goto done;
    device = PyDict_GetItemWithError(c->cached, dev_o);
    if (device == NULL) {
        if (PyErr_Occurred()) goto done;
        goto none;
    }
    Py_INCREF(device);
    {
        int a = truth_of(PyObject_GetAttr(device, s_active));
        if (a < 0) goto done;
        if (!a) goto none;
    }
    {   /* the LRU's order, as RegistryCache.get keeps it */
        PyObject *m = PyObject_CallOneArg(c->move_to_end, dev_o);
        if (m == NULL) goto done;
        Py_DECREF(m);
    }
    /* NULL: the device's first frame since the gateway started with an empty spool; its state is made (Verifier.state)
     * once the reading is accepted, and its counter so far is 0, as the general path takes it */
    PyObject *sta = PyDict_GetItemWithError(c->states, dev_o);   /* borrowed; held by the states */
    if (sta == NULL && PyErr_Occurred()) goto done;
    Py_XINCREF(sta);
    PyObject *pr = NULL;
    up_o = sta != NULL ? sget(&self->rs, sta, RS_UP) : PyLong_FromLong(0);
    if (up_o == NULL) goto done_sta;
    if (!PyLong_CheckExact(up_o)) goto none_sta;
    unsigned long long last = PyLong_AsUnsignedLongLong(up_o);
    if (last == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        goto none_sta;
    }
    /* mic_at_next: the full counter (counter.forward, inlined) within the window, and the MIC at it */
    unsigned long long fcnt = (last & 0xFFFF0000ULL) | c16;
    if (fcnt <= last) fcnt += 0x10000;
    if (fcnt > self->max_fcnt || fcnt - last > self->max_gap) goto none_sta;
    key = PyObject_GetAttr(device, s_key);
    if (key == NULL) goto done_sta;
    if (!PyBytes_CheckExact(key)) goto none_sta;
    {
        uint8_t msg[8 + READING_LEN + 2 - MIC_LEN], mac[32];
        const uint32_t *pads = pads_of(key);
        if (pads == NULL) goto done_sta;
        memcpy(msg, self->b0head, 4);
        put_be32(msg + 4, (uint32_t)fcnt);
        memcpy(msg + 8, r, (size_t)(n - MIC_LEN));
        hmac_from_pads(pads, msg, (size_t)(8 + n - MIC_LEN), mac);
        unsigned diff = 0;          /* constant time, as hmac.compare_digest */
        for (int i = 0; i < MIC_LEN; i++) diff |= mac[i] ^ r[n - MIC_LEN + i];
        if (diff) goto none_sta;
    }
    /* the rate bucket (Verifier._take_token): an empty one is the general path's rejection to name */
    double now = PyFloat_AS_DOUBLE(now_o), tokens, t_bucket, burst = c->burst, rate = c->rate;
    int k;
    {
        PyObject *tv = sta != NULL ? sget(&self->rs, sta, RS_TOKENS) : Py_NewRef(Py_None);
        if (tv == NULL) goto done_sta;
        k = tv == Py_None ? 0 : as_float(tv, &tokens);
        int fresh = tv == Py_None;                        /* no reading yet: a full bucket (_take_token) */
        Py_DECREF(tv);
        if (k != 0) goto k_sta;
        if (fresh) tokens = burst;
        else {
            if ((k = float_of(sget(&self->rs, sta, RS_T_BUCKET), &t_bucket)) != 0) goto k_sta;
            double refill = tokens + (now - t_bucket) * rate;
            tokens = refill < burst ? refill : burst;     /* min(burst, refill) */
        }
    }
    if (tokens < 1.0) goto none_sta;
    /* presence (PresenceTable.heard). Nothing can refuse the reading past the rate bucket: a device heard for the
     * first time gets its presence here (PresenceTable.first_heard: its silence, counted as heard). `due`: its
     * retained state falls due with this reading (PresenceTable.falls_due: first sight or back online, a new state
     * byte, the refresh); the caller publishes it */
    int due;
    pr = PyDict_GetItemWithError(c->devices, dev_o);
    if (pr == NULL && PyErr_Occurred()) goto done_sta;
    Py_XINCREF(pr);
    {
        double silence, pub;
        if (pr == NULL || ((k = float_of(sget(&self->pr, pr, PR_SILENCE), &silence)) == 0 && silence == 0.0)) {
            Py_XSETREF(pr, PyObject_CallMethodObjArgs(self->table, s_first_heard, dev_o, device, NULL));
            if (pr == NULL) goto done_sta;
            k = 0;
        }
        if (k != 0) goto k_sta;
        if ((k = float_of(sget(&self->pr, pr, PR_SILENCE), &silence)) != 0) goto k_sta;
        if ((k = float_of(sget(&self->pr, pr, PR_PUB), &pub)) != 0) goto k_sta;
        int on = truth_of(sget(&self->pr, pr, PR_ONLINE));
        if (on < 0) goto done_sta;
        PyObject *v = sget(&self->pr, pr, PR_SBYTE);
        if (v == NULL) goto done_sta;
        int same = PyLong_CheckExact(v) && PyLong_AsLong(v) == (long)st;
        if (PyErr_Occurred()) {
            PyErr_Clear();
            same = 0;
        }
        Py_DECREF(v);
        due = !on || !same || now - pub >= silence / 3;
    }
    /* accepted: from here on every change the general path would make */
    PyObject *pv, *pt, *iv = Py_None, *it = NULL;
    if (pressure_of(self, p, &pv, &pt) < 0) goto done_sta;
    if (inlet && pressure_of(self, iw, &iv, &it) < 0) goto done_sta;
    if (inlet && iv == Py_None) it = NULL;           /* fastlane: no inlet_pa key without a value */
    if (sta == NULL) {
        sta = PyObject_CallMethodOneArg(self->verifier, s_state, dev_o);     /* the device's first: its state */
        if (sta == NULL) goto done_sta;
    }
    fcnt_o = PyLong_FromUnsignedLongLong(fcnt);
    tok_new = PyFloat_FromDouble(tokens - 1.0);
    recent_o = sget(&self->rs, sta, RS_RECENT);
    if (!fcnt_o || !tok_new || !recent_o) goto done_sta;
    if (!PyBytes_CheckExact(recent_o)) goto none_sta;
    {
        Py_ssize_t old = PyBytes_GET_SIZE(recent_o), total = old + REC;
        Py_ssize_t keep = total < self->recent_bytes ? total : self->recent_bytes;
        newrec = PyBytes_FromStringAndSize(NULL, keep);
        if (newrec == NULL) goto done_sta;
        uint8_t full[REC], *w = (uint8_t *)PyBytes_AS_STRING(newrec);
        full[0] = (uint8_t)fcnt; full[1] = (uint8_t)(fcnt >> 8); full[2] = (uint8_t)(fcnt >> 16);
        full[3] = (uint8_t)(fcnt >> 24);
        memcpy(full + 4, r + n - MIC_LEN, MIC_LEN);
        memcpy(full + 4 + MIC_LEN, PyBytes_AS_STRING(t_rec), 4);
        /* the last `keep` bytes of recent + full */
        Py_ssize_t from_old = keep - REC;
        if (from_old > 0) memcpy(w, PyBytes_AS_STRING(recent_o) + old - from_old, (size_t)from_old);
        if (from_old >= 0) memcpy(w + from_old, full, REC);
        else memcpy(w, full - from_old, (size_t)keep);
    }
    /* the msg id and the entry text */
    char head[32];
    put_hex8(head, dev);            /* "%08x:%llu" */
    head[8] = ':';
    int hn = 9 + put_dec(head + 9, fcnt);
    Py_ssize_t pn = PyUnicode_GET_LENGTH(prefix);
    mid = PyUnicode_New(pn + hn, 127);
    if (mid == NULL) goto done_sta;
    {
        char *w = (char *)PyUnicode_1BYTE_DATA(mid);
        w = put(w, (const char *)PyUnicode_1BYTE_DATA(prefix), pn);
        put(w, head, hn);
    }
    {
        const txt_t *gt = &self->gas[g], *bt = &self->bat[bat], *stt = &self->state[st];
        char fc[24];
        int fn = put_dec(fc, fcnt);
        Py_ssize_t tn = PyUnicode_GET_LENGTH(t_txt), rn = PyUnicode_GET_LENGTH(rx_txt),
                   ptn = PyUnicode_GET_LENGTH(pt), itn = it ? PyUnicode_GET_LENGTH(it) : 0;
        /* gasguard.readings/3's row (payloads.reading_row; rx: the group's text, payloads.rx_cell): ["dev",fcnt,t,gas,pressure,battery,state,rx(,inlet)] */
        Py_ssize_t len = 2 + 8 + 2 + fn + 1 + tn + 1 + gt->n + 1 + ptn + 1 + bt->n + 1 + stt->n + 1 + rn
                         + (it ? 1 + itn : 0) + 1;
        js = PyUnicode_New(len, 127);
        if (js == NULL) goto done_sta;
        char *w = (char *)PyUnicode_1BYTE_DATA(js), *start = w;
        w = LIT(w, "[\"");
        w = put(w, head, 8);
        w = LIT(w, "\",");
        w = put(w, fc, fn);
        *w++ = ',';
        w = put(w, (const char *)PyUnicode_1BYTE_DATA(t_txt), tn);
        *w++ = ',';
        w = put(w, gt->s, gt->n);
        *w++ = ',';
        w = put(w, (const char *)PyUnicode_1BYTE_DATA(pt), ptn);
        *w++ = ',';
        w = put(w, bt->s, bt->n);
        *w++ = ',';
        w = put(w, stt->s, stt->n);
        *w++ = ',';
        w = put(w, (const char *)PyUnicode_1BYTE_DATA(rx_txt), rn);
        if (it) {
            *w++ = ',';
            w = put(w, (const char *)PyUnicode_1BYTE_DATA(it), itn);
        }
        *w++ = ']';
        if (w - start != len) {
            PyErr_SetString(PyExc_SystemError, "_lane: entry length");
            goto done_sta;
        }
    }
    gas_o = g == NA16 ? Py_NewRef(Py_None) : PyLong_FromUnsignedLong(g);
    bat_o = bat == 0xFF ? Py_NewRef(Py_None) : PyLong_FromUnsignedLong(bat);
    st_o = PyLong_FromUnsignedLong(st);
    if (!gas_o || !bat_o || !st_o) goto done_sta;
    if (sset(&self->rs, sta, RS_TOKENS, tok_new) < 0 || sset(&self->rs, sta, RS_T_BUCKET, now_o) < 0
        || sset(&self->rs, sta, RS_UP, fcnt_o) < 0 || sset(&self->rs, sta, RS_RECENT, newrec) < 0
        || sset(&self->pr, pr, PR_LAST_SEEN, now_o) < 0 || sset(&self->pr, pr, PR_R_FCNT, fcnt_o) < 0
        || sset(&self->pr, pr, PR_R_GAS, gas_o) < 0 || sset(&self->pr, pr, PR_R_PRESSURE, pv) < 0
        || sset(&self->pr, pr, PR_R_BATTERY, bat_o) < 0 || sset(&self->pr, pr, PR_R_STATE, st_o) < 0
        || sset(&self->pr, pr, PR_R_INLET, iv) < 0 || sset(&self->pr, pr, PR_R_T, now_o) < 0)
        goto done_sta;
    out = PyTuple_New(7);
    if (out == NULL) goto done_sta;
    PyTuple_SET_ITEM(out, 0, Py_NewRef(dev_o));
    PyTuple_SET_ITEM(out, 1, Py_NewRef(fcnt_o));
    PyTuple_SET_ITEM(out, 2, Py_NewRef(up_o));
    PyTuple_SET_ITEM(out, 3, Py_NewRef(mid));
    PyTuple_SET_ITEM(out, 4, Py_NewRef(js));
    PyTuple_SET_ITEM(out, 5, PyBool_FromLong((st & 0xF8) == 0));
    PyTuple_SET_ITEM(out, 6, due ? Py_NewRef(st_o) : Py_NewRef(Py_None));
    goto done_sta;

k_sta:
    if (k < 0) goto done_sta;
none_sta:
    out = Py_NewRef(Py_None);
done_sta:
    Py_XDECREF(sta);
    Py_XDECREF(pr);
    goto done;
none:
    out = Py_NewRef(Py_None);
done:
    Py_XDECREF(dev_o);
    Py_XDECREF(device);
    Py_XDECREF(key);
    Py_XDECREF(up_o);
    Py_XDECREF(fcnt_o);
    Py_XDECREF(recent_o);
    Py_XDECREF(newrec);
    Py_XDECREF(tok_new);
    Py_XDECREF(mid);
    Py_XDECREF(js);
    Py_XDECREF(gas_o);
    Py_XDECREF(bat_o);
    Py_XDECREF(st_o);
    return out;
}

static PyObject *Lane_take(Lane *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "take(raw, now, shared)");
        return NULL;
    }
    ctx_t c;
    int k = ctx_open(self, &c);
    PyObject *out = k < 0 ? NULL : k > 0 ? Py_NewRef(Py_None) : take_one(self, &c, args[0], args[1], args[2]);
    ctx_close(&c);
    return out;
}

/* run(group, i, now, shared, rx, undo, counters, routes, rs, states, most, room, flush, published, up) -> j
 * Ingest._prepare's loop over the lane's frames (issue 17), for the frames group[i:j]: each (raw, rx, route) of
 * the transport's `rx` object that take() takes gets, as _prepare's Python loop gives it, an undo entry
 * (dev, previous counter), its counter (counters[(dev, up)] = fcnt), its route (dev, route, rx), its row text in
 * the run being gathered and, when its state falls due, what published(dev, state byte) returns appended to
 * `states` (ingest: the device, its state to be published once the group is committed). The run is rs = [texts,
 * bytes, routine, head dev, head msg id], shared with the Python loop; flush() ends it (an Item in ingest's items,
 * rs[0] a new list) when the next text would change its routine or pass `most` texts or
 * `room` bytes. Stops at the first frame take() declines (or not of `rx`, or noise): j is its index, nothing of it
 * changed; the Python loop goes on from there. */
static PyObject *Lane_run(Lane *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 15) {
        PyErr_SetString(PyExc_TypeError, "run(group, i, now, shared, rx, undo, counters, routes, rs, states, most, "
                                         "room, flush, published, up)");
        return NULL;
    }
    PyObject *group = args[0], *now_o = args[2], *shared = args[3], *rx = args[4], *undo = args[5],
             *counters = args[6], *routes = args[7], *rs = args[8], *states = args[9], *flush = args[12],
             *published = args[13], *up = args[14];
    Py_ssize_t i = PyLong_AsSsize_t(args[1]), most = PyLong_AsSsize_t(args[10]), room = PyLong_AsSsize_t(args[11]);
    if ((i == -1 || most == -1 || room == -1) && PyErr_Occurred()) return NULL;
    if (!PyList_CheckExact(group)) return PyLong_FromSsize_t(i);    /* (a tuple of frames: the Python loop's) */
    if (!PyList_CheckExact(undo) || !PyDict_CheckExact(counters)
        || !PyList_CheckExact(routes) || !PyList_CheckExact(rs) || PyList_GET_SIZE(rs) != 5
        || !PyList_CheckExact(states)) {
        PyErr_SetString(PyExc_TypeError, "run: lists, a dict and rs of 5");
        return NULL;
    }
    Py_ssize_t j = i;
    ctx_t c;
    int k = ctx_open(self, &c);
    if (k != 0) {
        ctx_close(&c);
        return k < 0 ? NULL : PyLong_FromSsize_t(i);      /* nothing taken: the Python loop's frames */
    }
    for (; j < PyList_GET_SIZE(group); j++) {
        PyObject *fr = PyList_GET_ITEM(group, j);
        if (!PyTuple_CheckExact(fr) || PyTuple_GET_SIZE(fr) != 3 || PyTuple_GET_ITEM(fr, 1) != rx) break;
        PyObject *raw = PyTuple_GET_ITEM(fr, 0);
        if (!PyBytes_CheckExact(raw)) break;             /* noise (None): the Python loop counts it */
        PyObject *r = take_one(self, &c, raw, now_o, shared);
        if (r == NULL) {
            ctx_close(&c);
            return NULL;
        }
        if (r == Py_None) {
            Py_DECREF(r);
            break;
        }
        PyObject *dev = PyTuple_GET_ITEM(r, 0), *fcnt = PyTuple_GET_ITEM(r, 1), *prev = PyTuple_GET_ITEM(r, 2),
                 *mid = PyTuple_GET_ITEM(r, 3), *js = PyTuple_GET_ITEM(r, 4), *routine = PyTuple_GET_ITEM(r, 5),
                 *due = PyTuple_GET_ITEM(r, 6);
        int ok = 0;
        PyObject *u = PyTuple_Pack(2, dev, prev), *key = PyTuple_Pack(2, dev, up),
                 *ro = PyTuple_Pack(3, dev, PyTuple_GET_ITEM(fr, 2), rx);
        if (u && key && ro && PyList_Append(undo, u) == 0 && PyDict_SetItem(counters, key, fcnt) == 0
            && PyList_Append(routes, ro) == 0)
            ok = 1;
        Py_XDECREF(u);
        Py_XDECREF(key);
        Py_XDECREF(ro);
        if (ok) {
            /* the run: the same rule as the Python loop's (Ingest._prepare) */
            Py_ssize_t jn = PyUnicode_GET_LENGTH(js);
            PyObject *run = PyList_GET_ITEM(rs, 0);
            Py_ssize_t have = PyList_CheckExact(run) ? PyList_GET_SIZE(run) : -1;
            if (have > 0) {
                Py_ssize_t rb = PyLong_AsSsize_t(PyList_GET_ITEM(rs, 1));
                if (rb == -1 && PyErr_Occurred()) ok = 0;
                else if (PyList_GET_ITEM(rs, 2) != routine || have >= most || rb + jn + 1 > room) {
                    PyObject *f = PyObject_CallNoArgs(flush);
                    if (f == NULL) ok = 0;
                    Py_XDECREF(f);
                    run = PyList_GET_ITEM(rs, 0);
                    have = PyList_CheckExact(run) ? PyList_GET_SIZE(run) : -1;
                }
            }
            if (ok && have < 0) {               /* rs[0] is the run's list of texts, always (flush keeps it so) */
                PyErr_SetString(PyExc_TypeError, "run: rs[0] is not a list");
                ok = 0;
            }
            if (ok && !have) {
                PyObject *zero = PyLong_FromLong(0);
                if (zero == NULL || PyList_SetItem(rs, 1, zero) < 0) ok = 0;   /* (steals zero) */
                else {
                    Py_INCREF(routine); PyList_SetItem(rs, 2, routine);
                    Py_INCREF(dev); PyList_SetItem(rs, 3, dev);
                    Py_INCREF(mid); PyList_SetItem(rs, 4, mid);
                }
            }
            if (ok && PyList_Append(run, js) < 0) ok = 0;
            if (ok) {
                Py_ssize_t rb = PyLong_AsSsize_t(PyList_GET_ITEM(rs, 1));
                PyObject *nb = (rb == -1 && PyErr_Occurred()) ? NULL : PyLong_FromSsize_t(rb + jn + 1);
                if (nb == NULL || PyList_SetItem(rs, 1, nb) < 0) ok = 0;      /* (SetItem steals nb) */
            }
            if (ok && due != Py_None) {     /* its retained state falls due, where the Python loop marks it */
                PyObject *it = PyObject_CallFunctionObjArgs(published, dev, due, NULL);
                if (it == NULL || PyList_Append(states, it) < 0) ok = 0;
                Py_XDECREF(it);
            }
        }
        Py_DECREF(r);
        if (!ok) {
            ctx_close(&c);
            return NULL;
        }
    }
    ctx_close(&c);
    return PyLong_FromSsize_t(j);
}

static PyMethodDef Lane_methods[] = {
    {"take", (PyCFunction)(void (*)(void))Lane_take, METH_FASTCALL,
     "take(raw, now, shared): (dev, fcnt, previous counter, msg id, entry JSON, routine), or None"},
    {"run", (PyCFunction)(void (*)(void))Lane_run, METH_FASTCALL,
     "run(group, i, now, shared, rx, undo, counters, routes, rs, states, most, room, flush, published, up) -> j"},
    {NULL}};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gasguard.gateway._lane.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The reading lane (fastlane.ReadingLane.take) in C.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lane_init,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_methods = Lane_methods,
};


/* -- the UART deframer's segment loop (protocol/framing.py Deframer._segments; issue 17) --------------------
 * segments(parts, limit, out) -> (frames, texts), or None having appended nothing when a segment is longer than
 * 255 bytes and within `limit` (the general COBS decode's case: the Python loop takes the whole call). Each
 * segment of `parts` (the bytes between two delimiters) appends (0, frame) / (1, text) / (2, reason) to `out`,
 * as the Python loop does (FRAME, TEXT, NOISE: tests/test_deframe_c.py holds the two equal); the caller counts
 * the noise by reason. py-spy on the gateway: the Python loop was ~13 % of the time it held the GIL. */
static uint16_t crc_table[256];

static void crc_init(void) {
    for (int i = 0; i < 256; i++) {
        uint16_t c = (uint16_t)(i << 8);
        for (int k = 0; k < 8; k++) c = (uint16_t)(c & 0x8000 ? (c << 1) ^ 0x1021 : c << 1);
        crc_table[i] = c;
    }
}

/* binascii.crc_hqx(data, 0xFFFF): CRC-16/CCITT-FALSE */
static uint16_t crc16_ccitt(const uint8_t *d, Py_ssize_t n) {
    uint16_t c = 0xFFFF;
    for (Py_ssize_t i = 0; i < n; i++) c = (uint16_t)((c << 8) ^ crc_table[((c >> 8) ^ d[i]) & 0xFF]);
    return c;
}

/* SPEC 6: printable text is 0x20-0x7E, tab, CR, LF and bytes >= 0x80 (framing._is_text) */
static int is_text(const uint8_t *d, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        uint8_t b = d[i];
        if ((b < 0x20 && b != 9 && b != 10 && b != 13) || b == 0x7F) return 0;
    }
    return 1;
}

static PyObject *k_frame, *k_text, *k_noise, *r_overflow, *r_cobs, *r_short, *r_crc;

static int append_pair(PyObject *out, PyObject *kind, PyObject *payload) {
    PyObject *t = PyTuple_Pack(2, kind, payload);
    if (t == NULL) return -1;
    int r = PyList_Append(out, t);
    Py_DECREF(t);
    return r;
}

static PyObject *py_segments(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3 || !PyList_CheckExact(args[0]) || !PyLong_CheckExact(args[1]) || !PyList_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "segments(parts: list, limit: int, out: list)");
        return NULL;
    }
    PyObject *parts = args[0], *out = args[2];
    Py_ssize_t limit = PyLong_AsSsize_t(args[1]);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t np = PyList_GET_SIZE(parts);
    for (Py_ssize_t k = 0; k < np; k++) {
        PyObject *seg = PyList_GET_ITEM(parts, k);
        if (!PyBytes_CheckExact(seg)) {
            PyErr_SetString(PyExc_TypeError, "segments: parts must be bytes");
            return NULL;
        }
        Py_ssize_t n = PyBytes_GET_SIZE(seg);
        if (n > 255 && n <= limit) Py_RETURN_NONE;
    }
    long frames = 0, texts = 0;
    uint8_t raw[256];
    for (Py_ssize_t k = 0; k < np; k++) {
        PyObject *seg = PyList_GET_ITEM(parts, k), *reason;
        const uint8_t *sd = (const uint8_t *)PyBytes_AS_STRING(seg);
        Py_ssize_t n = PyBytes_GET_SIZE(seg);
        if (n == 0) continue;               /* SPEC 6: empty segments are ignored */
        if (n > limit) {                    /* a drop this delimiter ended: counted once */
            if (append_pair(out, k_noise, r_overflow) < 0) return NULL;
            continue;
        }
        /* COBS decoded in place (n <= 255): each block code after the first stands for a zero */
        const uint8_t *dec = NULL;
        unsigned code = sd[0];
        if ((Py_ssize_t)code == n) dec = sd;   /* one block: no zero in the frame and its CRC */
        else if ((Py_ssize_t)code < n) {
            memcpy(raw, sd, (size_t)n);
            Py_ssize_t i = code;
            while (i < n) {
                code = sd[i];
                raw[i] = 0;
                i += code;
            }
            if (i == n) dec = raw;
        }
        if (dec == NULL) reason = r_cobs;
        else if (n < 4) reason = r_short;   /* decoded n - 1 bytes: not more than a CRC */
        else if (crc16_ccitt(dec + 1, n - 3) == (uint16_t)(dec[n - 2] << 8 | dec[n - 1])) {
            PyObject *body = PyBytes_FromStringAndSize((const char *)dec + 1, n - 3);
            if (body == NULL) return NULL;
            int r = append_pair(out, k_frame, body);
            Py_DECREF(body);
            if (r < 0) return NULL;
            frames++;
            continue;
        } else reason = r_crc;
        if (is_text(sd, n)) {
            if (append_pair(out, k_text, seg) < 0) return NULL;
            texts++;
        } else if (append_pair(out, k_noise, reason) < 0) return NULL;
    }
    return Py_BuildValue("(ll)", frames, texts);
}

/* -- a group's headers, read once a frame without a Python step each (issue 17) ------------------------------
 * has_type(frames, t): does a frame of `frames` ((raw, ...) tuples; raw None for line noise) have the header type
 * `t` (ingest.has_alarm: (raw[0] >> 3) & 7)? devices(frames): the device id (raw[1:5], big-endian) of each frame
 * that has one, in order (ingest's registry read-ahead). None from either: a raw that is neither bytes nor None,
 * left to the Python form. Those stay in ingest.py as the reference and the fallback; tests/test_lane_c.py holds
 * the two equal. Each Python loop was ~0.1-0.3 us a reading (timeit, groups of 170). */
static PyObject *py_has_type(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "has_type(list of frames, type)");
        return NULL;
    }
    long t = PyLong_AsLong(args[1]);
    if (t == -1 && PyErr_Occurred()) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(args[0]); i++) {
        PyObject *fr = PyList_GET_ITEM(args[0], i);
        if (!PyTuple_Check(fr) || PyTuple_GET_SIZE(fr) < 1) {
            PyErr_SetString(PyExc_TypeError, "has_type: a frame is a (raw, ...) tuple");
            return NULL;
        }
        PyObject *raw = PyTuple_GET_ITEM(fr, 0);
        if (raw != Py_None && !PyBytes_Check(raw)) Py_RETURN_NONE;     /* not bytes: the Python loop's */
        if (raw != Py_None && PyBytes_GET_SIZE(raw) > 0
            && ((((const uint8_t *)PyBytes_AS_STRING(raw))[0] >> 3) & 7) == t)
            Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

static PyObject *py_devices(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 1 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "devices(list of frames)");
        return NULL;
    }
    PyObject *frames = args[0], *out = PyList_New(0);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(frames); i++) {
        PyObject *fr = PyList_GET_ITEM(frames, i);
        if (!PyTuple_Check(fr) || PyTuple_GET_SIZE(fr) < 1) {
            Py_DECREF(out);
            PyErr_SetString(PyExc_TypeError, "devices: a frame is a (raw, ...) tuple");
            return NULL;
        }
        PyObject *raw = PyTuple_GET_ITEM(fr, 0);
        if (raw != Py_None && !PyBytes_Check(raw)) {         /* not bytes: the Python loop's */
            Py_DECREF(out);
            Py_RETURN_NONE;
        }
        if (raw == Py_None || PyBytes_GET_SIZE(raw) < 5) continue;
        PyObject *d = PyLong_FromUnsignedLong(be32((const uint8_t *)PyBytes_AS_STRING(raw) + 1));
        if (d == NULL || PyList_Append(out, d) < 0) {
            Py_XDECREF(d);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(d);
    }
    return out;
}

static PyMethodDef module_methods[] = {
    {"has_type", (PyCFunction)(void (*)(void))py_has_type, METH_FASTCALL,
     "has_type(frames, t) -> bool: a frame's header type is t (ingest.has_alarm)"},
    {"devices", (PyCFunction)(void (*)(void))py_devices, METH_FASTCALL,
     "devices(frames) -> [device id of each frame that has one] (ingest's registry read-ahead)"},
    {"segments", (PyCFunction)(void (*)(void))py_segments, METH_FASTCALL,
     "segments(parts, limit, out) -> (frames, texts) or None: the UART deframer's segment loop "
     "(framing.Deframer._segments)"},
    {"hmac_sha256", py_hmac_sha256, METH_VARARGS, "hmac_sha256(key, msg) -> 32 bytes (tests)"},
    {"sha256", py_sha256, METH_VARARGS, "sha256(msg) -> 32 bytes (tests)"},
    {"use_shani", py_use_shani, METH_O,
     "use_shani(on): the SHA extensions' compression when on and the CPU has them, else the portable one; "
     "returns whether they are in use (tests, benchmarks)"},
    {NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_lane", "The reading lane in C (issue 17).", -1,
                                    module_methods};

PyMODINIT_FUNC PyInit__lane(void) {
#define INTERN(v, s) if (!((v) = PyUnicode_InternFromString(s))) return NULL
    INTERN(s_first_heard, "first_heard"); INTERN(s_state, "state");
    INTERN(s_registry, "registry"); INTERN(s_states, "states"); INTERN(s_devices, "devices"); INTERN(s_cached, "cached"); INTERN(s_active, "active"); INTERN(s_move_to_end, "move_to_end");
    INTERN(s_up, "up"); INTERN(s_tokens, "tokens"); INTERN(s_t_bucket, "t_bucket"); INTERN(s_recent, "recent");
    INTERN(s_online, "online"); INTERN(s_sbyte, "sbyte"); INTERN(s_silence, "silence"); INTERN(s_pub, "pub");
    INTERN(s_last_seen, "last_seen"); INTERN(s_r_fcnt, "r_fcnt"); INTERN(s_r_gas, "r_gas");
    INTERN(s_r_pressure, "r_pressure"); INTERN(s_r_battery, "r_battery"); INTERN(s_r_state, "r_state");
    INTERN(s_r_inlet, "r_inlet"); INTERN(s_r_t, "r_t"); INTERN(s_key, "key"); INTERN(s_burst, "burst");
    INTERN(s_rate, "rate");
    INTERN(r_overflow, "overflow"); INTERN(r_cobs, "cobs"); INTERN(r_short, "short"); INTERN(r_crc, "crc");
    if (!(k_frame = PyLong_FromLong(0)) || !(k_text = PyLong_FromLong(1)) || !(k_noise = PyLong_FromLong(2)))
        return NULL;     /* framing.FRAME, TEXT, NOISE */
    crc_init();
#undef INTERN
    pads_cache = PyDict_New();
    if (pads_cache == NULL) return NULL;
#ifdef HAVE_SHANI_BUILD
    sha_shani_available = cpu_has_shani();
    if (sha_shani_available) sha_block = block_shani;
#endif
    if (PyType_Ready(&LaneType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Lane", (PyObject *)&LaneType) < 0
        || PyModule_AddIntConstant(m, "SHA_EXTENSIONS", sha_shani_available) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
