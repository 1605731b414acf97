/* The simulator's event loop in C: the same model as the pure-Python engine, event for event.
 *
 * `sim_native.py` builds a `Core` from a `Simulator` that the Python code has set up (nodes,
 * links, costs, route graph) and copies its state back after `run()`, so results, integrity
 * checks and reports are shared. This file mirrors `sim_iterations.py` (node iterations and
 * transfers), `sim_coordinator.py` (admission, sampling, finishing) and the cost classes of
 * `sim_compute.py`, doing each floating-point operation in the same order, so both engines give
 * identical results (the tests compare them). The Python side keeps what is rare or
 * pluggable: the routing policy's choice at admission, the length and arrival draws, and the
 * policy's per-iteration `observe` hook.
 *
 * Events are (time, sequence) keyed binary-heap entries, like the Python engine's heap of
 * tuples: keys are unique, so both pop in the same order.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef long long i64;

/* ---- memory -------------------------------------------------------------------------------- */

static void *xmalloc(size_t size) {
    void *p = malloc(size ? size : 1);
    if (p == NULL) Py_FatalError("helix simulator: out of memory");
    return p;
}

static void *xrealloc(void *old, size_t size) {
    void *p = realloc(old, size ? size : 1);
    if (p == NULL) Py_FatalError("helix simulator: out of memory");
    return p;
}

#define VEC_PUSH(arr, n, cap, value)                                  \
    do {                                                              \
        if ((n) == (cap)) {                                           \
            (cap) = (cap) ? 2 * (cap) : 8;                            \
            (arr) = xrealloc((arr), sizeof(*(arr)) * (size_t)(cap));  \
        }                                                             \
        (arr)[(n)++] = (value);                                       \
    } while (0)

/* Room for entry `need` of an array whose entries own buffers (new entries zeroed). */
#define GROW_ZEROED(arr, alloc, need)                                             \
    do {                                                                          \
        if ((need) >= (alloc)) {                                                  \
            int old_ = (alloc);                                                   \
            (alloc) = old_ ? 2 * old_ : 8;                                        \
            (arr) = xrealloc((arr), sizeof(*(arr)) * (size_t)(alloc));            \
            memset((arr) + old_, 0, sizeof(*(arr)) * (size_t)((alloc) - old_));   \
        }                                                                         \
    } while (0)

/* ---- costs (sim_compute.py) ---------------------------------------------------------------- */

typedef struct {
    i64 x;
    double y;
} Pt;

typedef struct {
    Pt *p;
    int n;
} Pts;

enum { COST_ROOFLINE = 0, COST_TABLE = 1, COST_RATE = 2 };

typedef struct {
    int kind;
    double weights_s, kv_s, token_s, attn_s; /* RooflineCost; token_s also TokenRateCost */
    double floor_s;                          /* TokenRateCost */
    Pts prompt, decode;                      /* TableCost */
    int stage;                               /* wrapped in StageCost */
    i64 stage_layers;
    Pts head, prompt_pass, decode_pass;
} Cost;

/* _interpolate: linear through the points, the last segment's slope beyond, proportional below */
static double interpolate(const Pts *pts, i64 x) {
    const Pt *p = pts->p;
    int n = pts->n;
    if (x <= p[0].x) return p[0].y * (double)x / (double)p[0].x;
    for (int i = 0; i + 1 < n; i++) {
        if (x <= p[i + 1].x)
            return p[i].y + (p[i + 1].y - p[i].y) * (double)(x - p[i].x) /
                                (double)(p[i + 1].x - p[i].x);
    }
    if (n == 1) return p[0].y * (double)x / (double)p[0].x;
    double slope = (p[n - 1].y - p[n - 2].y) / (double)(p[n - 1].x - p[n - 2].x);
    double m = slope > 0.0 ? slope : 0.0; /* max(0.0, slope) */
    return p[n - 1].y + m * (double)(x - p[n - 1].x);
}

static double inner_prompt_s(const Cost *c, i64 n, i64 sq) {
    switch (c->kind) {
    case COST_ROOFLINE:
        if (n <= 0) return 0.0;
        return (double)n * c->token_s + (double)(2 * sq) * c->attn_s + c->weights_s;
    case COST_TABLE:
        return n <= 0 ? 0.0 : interpolate(&c->prompt, n) / 1e3;
    default:
        return (double)n * c->token_s;
    }
}

static double inner_decode_s(const Cost *c, i64 n, i64 ctx) {
    switch (c->kind) {
    case COST_ROOFLINE: {
        if (n <= 0) return 0.0;
        double memory_s = c->weights_s + (double)ctx * c->kv_s;
        double compute_s = (double)n * c->token_s + (double)(4 * ctx) * c->attn_s;
        return memory_s > compute_s ? memory_s : compute_s;
    }
    case COST_TABLE:
        return n <= 0 ? 0.0 : interpolate(&c->decode, n) / 1e3;
    default: {
        if (n <= 0) return 0.0;
        double x = (double)n * c->token_s;
        return x > c->floor_s ? x : c->floor_s; /* max(floor_s, x) */
    }
    }
}

static double per_layer_s(const Cost *c, const Pts *pts, i64 n) {
    return pts->n ? interpolate(pts, n) / 1e3 / (double)c->stage_layers : 0.0;
}

static double prompt_s(const Cost *c, i64 n, i64 sq) {
    if (!c->stage) return inner_prompt_s(c, n, sq);
    if (n <= 0) return 0.0;
    i64 rows = 1;
    if (sq > 0) {
        i64 r = (i64)nearbyint((double)(n * n) / (double)sq); /* round(): half to even */
        rows = r > 1 ? r : 1;
    }
    return inner_prompt_s(c, n, sq) + per_layer_s(c, &c->head, rows) +
           per_layer_s(c, &c->prompt_pass, n);
}

static double decode_s(const Cost *c, i64 n, i64 ctx) {
    if (!c->stage) return inner_decode_s(c, n, ctx);
    if (n <= 0) return 0.0;
    return inner_decode_s(c, n, ctx) + per_layer_s(c, &c->head, n) +
           per_layer_s(c, &c->decode_pass, n);
}

/* ---- state (sim_state.py) ------------------------------------------------------------------ */

typedef struct Link {
    double bps, latency_s, free_s;
    int src, dst; /* node indices; -1 for the coordinator */
    int direct;
} Link;

typedef struct Route {
    int n;
    int *nodes;
    i64 *layers;
    Link **out; /* out[h]: the link from hop h to hop h + 1 (the coordinator after the last) */
    i64 stamp;  /* grouping scratch for `receive` */
    int slot;
    int id;
} Route;

typedef struct Req {
    double arrival_s;
    i64 prompt, output, done;
    Route *route;
    struct Req *prev, *next; /* the resident list, or (waiting) the FIFO */
} Req;

typedef struct Packet {
    Req **reqs;
    int nreqs;
    Route *route;
    int hop;
    int is_prompt;
    i64 tokens, ctx, sq;
    double step_start, arrived;
    struct Packet *next; /* node queues */
} Packet;

typedef struct {
    int n;
    Packet *p[];
} Msg;

enum { EV_DONE = 0, EV_WAKE = 1, EV_TOKENS = 2, EV_ARRIVAL = 3 };

typedef struct {
    double t;
    i64 seq;
    int kind;
    int idx;
    void *ptr;
} Ev;

typedef struct {
    Ev *a;
    int n, cap;
} Heap;

static inline int ev_less(const Ev *x, const Ev *y) {
    return x->t < y->t || (x->t == y->t && x->seq < y->seq);
}

static void heap_push(Heap *h, double t, i64 seq, int kind, int idx, void *ptr) {
    if (h->n == h->cap) {
        h->cap = h->cap ? 2 * h->cap : 16;
        h->a = xrealloc(h->a, sizeof(Ev) * (size_t)h->cap);
    }
    Ev e = {t, seq, kind, idx, ptr};
    int i = h->n++;
    while (i > 0) {
        int parent = (i - 1) >> 1;
        if (!ev_less(&e, &h->a[parent])) break;
        h->a[i] = h->a[parent];
        i = parent;
    }
    h->a[i] = e;
}

static Ev heap_pop(Heap *h) {
    Ev top = h->a[0];
    Ev last = h->a[--h->n];
    int n = h->n, i = 0;
    if (n > 0) {
        for (;;) {
            int child = 2 * i + 1;
            if (child >= n) break;
            if (child + 1 < n && ev_less(&h->a[child + 1], &h->a[child])) child++;
            if (!ev_less(&h->a[child], &last)) break;
            h->a[i] = h->a[child];
            i = child;
        }
        h->a[i] = last;
    }
    return top;
}

typedef struct {
    i64 num_layers;
    Cost cost;
    double empty_prompt_s, empty_decode_s;
    i64 kv_capacity, kv_used, kv_peak, seats;
    double kv_area, kv_last;
    double nic_out_free, nic_in_free, lat_in_min;
    Packet *pq_head, *pq_tail, *dq_head, *dq_tail;
    Heap pending;
    double wake_at;
    int busy;
    Packet **batch;
    int nbatch, batch_alloc;
    double iter_start, busy_s;
    i64 iterations, decode_seqs, queued;
} Node;

typedef struct {
    Route *route;
    Req **reqs;
    int n, cap;
} Group;

typedef struct {
    Link *link;
    Packet **p;
    int n, cap;
} OutGroup;

typedef struct {
    PyObject_HEAD
    int nn, nl;
    Node *nodes;
    Link *links;
    int **succ_v; /* indexed by at + 1 (at = -1 is SOURCE) */
    i64 **succ_layers;
    int *succ_n;
    Link **source_link; /* per node: the coordinator's link to it, or NULL */
    Route **routes;
    int nroutes, routes_alloc;
    Heap heap;
    i64 counter, num_events;
    double now, last_s;
    int ran;
    /* parameters */
    i64 batch_cap, prompt_cap, act_bytes, token_bytes, seats_limit, limit, max_prefilling;
    int partial, offline;
    double win_start, win_end, end_s, bin_s;
    /* coordinator */
    Req *wait_head, *wait_tail;
    i64 num_waiting;
    Req resident; /* sentinel of a circular list */
    i64 num_resident, prefilling, num_created, num_admitted, num_completed, num_dropped;
    i64 drops_in_row;
    int *outbox_slot; /* per node: index into outbox, or -1 */
    OutGroup *outbox;
    int noutbox, outbox_alloc;
    Group *groups;
    int ngroups_alloc;
    i64 stamp;
    /* recorder */
    i64 *decode_bins, *prompt_bins;
    int nbins;
    i64 decode_tokens, prompt_tokens;
    double *ttft, *step_latency;
    i64 *step_weight;
    i64 nttft, ttft_alloc, nsteps, steps_alloc, nweights, weights_alloc;
    /* scratch */
    Packet **tmp_a, **tmp_b, **tmp_c;
    int tmp_a_alloc, tmp_b_alloc, tmp_c_alloc;
    OutGroup *sends;
    int sends_alloc;
    i64 *partial_keys;
    i64 (*partial_sums)[4];
    int partial_alloc;
    /* Python callbacks */
    PyObject *draw, *next_after, *route_cb, *observe;
} Core;

/* ---- packets and messages ------------------------------------------------------------------ */

static Packet *packet_new(Req **reqs, int nreqs, Route *route, int is_prompt, i64 tokens,
                          i64 ctx, i64 sq, double step_start) {
    Packet *p = xmalloc(sizeof(Packet));
    p->reqs = xmalloc(sizeof(Req *) * (size_t)nreqs);
    memcpy(p->reqs, reqs, sizeof(Req *) * (size_t)nreqs);
    p->nreqs = nreqs;
    p->route = route;
    p->hop = 0;
    p->is_prompt = is_prompt;
    p->tokens = tokens;
    p->ctx = ctx;
    p->sq = sq;
    p->step_start = step_start;
    p->arrived = step_start;
    p->next = NULL;
    return p;
}

static void packet_free(Packet *p) {
    free(p->reqs);
    free(p);
}

static Msg *msg_new(Packet **p, int n) {
    Msg *m = xmalloc(sizeof(Msg) + sizeof(Packet *) * (size_t)n);
    m->n = n;
    memcpy(m->p, p, sizeof(Packet *) * (size_t)n);
    return m;
}

static void queue_append(Packet **head, Packet **tail, Packet *p) {
    p->next = NULL;
    if (*tail) (*tail)->next = p;
    else *head = p;
    *tail = p;
}

static Packet *queue_popleft(Packet **head, Packet **tail) {
    Packet *p = *head;
    *head = p->next;
    if (*head == NULL) *tail = NULL;
    p->next = NULL;
    return p;
}

/* ---- node iterations and transfers (sim_iterations.py) ------------------------------------- */

static void collect(Core *c, Node *node, double now);
static void next_iteration(Core *c, Node *node, double now);

static inline int node_index(Core *c, Node *node) { return (int)(node - c->nodes); }

static void run_batch(Core *c, Node *node, double now, Packet **batch, int nb, i64 num_seqs,
                      i64 ctx, i64 num_prompt, i64 sq);

static double partial_s(Core *c, Node *node) {
    /* layers -> [prompt tokens, sq, decode seqs, ctx], in descending order of layers; at most
     * one key per packet, so the scratch holds `nbatch` of them */
    if (node->nbatch > c->partial_alloc) {
        c->partial_alloc = node->nbatch;
        c->partial_keys = xrealloc(c->partial_keys, sizeof(i64) * (size_t)c->partial_alloc);
        c->partial_sums = xrealloc(c->partial_sums, sizeof(i64[4]) * (size_t)c->partial_alloc);
    }
    i64 *keys = c->partial_keys;
    i64(*sums)[4] = c->partial_sums;
    int nk = 0;
    for (int i = 0; i < node->nbatch; i++) {
        Packet *p = node->batch[i];
        i64 layers = p->route->layers[p->hop];
        int k = 0;
        while (k < nk && keys[k] != layers) k++;
        if (k == nk) {
            keys[nk] = layers;
            sums[nk][0] = sums[nk][1] = sums[nk][2] = sums[nk][3] = 0;
            nk++;
        }
        if (p->is_prompt) {
            sums[k][0] += p->tokens;
            sums[k][1] += p->sq;
        } else {
            sums[k][2] += p->tokens;
            sums[k][3] += p->ctx;
        }
    }
    /* sort keys descending (insertion sort; a handful of entries) */
    for (int i = 1; i < nk; i++) {
        i64 key = keys[i], s0 = sums[i][0], s1 = sums[i][1], s2 = sums[i][2], s3 = sums[i][3];
        int j = i - 1;
        while (j >= 0 && keys[j] < key) {
            keys[j + 1] = keys[j];
            memcpy(sums[j + 1], sums[j], sizeof(sums[j]));
            j--;
        }
        keys[j + 1] = key;
        sums[j + 1][0] = s0;
        sums[j + 1][1] = s1;
        sums[j + 1][2] = s2;
        sums[j + 1][3] = s3;
    }
    const Cost *cost = &node->cost;
    double total = 0.0;
    i64 cum[4] = {0, 0, 0, 0};
    for (int i = 0; i < nk; i++) {
        for (int j = 0; j < 4; j++) cum[j] += sums[i][j];
        i64 below = i + 1 < nk ? keys[i + 1] : 0;
        total += (double)(keys[i] - below) *
                 (prompt_s(cost, cum[0], cum[1]) + decode_s(cost, cum[2], cum[3]));
    }
    return total;
}

static void run_batch(Core *c, Node *node, double now, Packet **batch, int nb, i64 num_seqs,
                      i64 ctx, i64 num_prompt, i64 sq) {
    node->decode_seqs += num_seqs;
    node->busy = 1;
    if (nb > node->batch_alloc) {
        node->batch_alloc = nb > 2 * node->batch_alloc ? nb : 2 * node->batch_alloc;
        node->batch = xrealloc(node->batch, sizeof(Packet *) * (size_t)node->batch_alloc);
    }
    memcpy(node->batch, batch, sizeof(Packet *) * (size_t)nb);
    node->nbatch = nb;
    node->iter_start = now;
    double k = (double)node->num_layers, seconds;
    const Cost *cost = &node->cost;
    if (c->partial)
        seconds = partial_s(c, node);
    else if (num_prompt == 0)
        seconds = k * (node->empty_prompt_s + decode_s(cost, num_seqs, ctx));
    else if (num_seqs == 0)
        seconds = k * (prompt_s(cost, num_prompt, sq) + node->empty_decode_s);
    else
        seconds = k * (prompt_s(cost, num_prompt, sq) + decode_s(cost, num_seqs, ctx));
    heap_push(&c->heap, now + seconds, c->counter++, EV_DONE, node_index(c, node), NULL);
}

/* An idle node with nothing queued starts on one transfer's packets (landed at `arrival`). */
static void begin(Core *c, Node *node, double now, Msg *m, double arrival) {
    i64 num_seqs = 0, ctx = 0;
    int broke = 0;
    for (int i = 0; i < m->n; i++) {
        Packet *p = m->p[i];
        p->arrived = arrival;
        if (p->is_prompt) {
            broke = 1;
            break;
        }
        num_seqs += p->tokens;
        ctx += p->ctx;
    }
    if (!broke && num_seqs <= c->batch_cap) {
        run_batch(c, node, now, m->p, m->n, num_seqs, ctx, 0, 0);
        free(m);
        return;
    }
    heap_push(&node->pending, arrival, c->counter++, 0, 0, m);
    collect(c, node, now);
}

static void transfer(Core *c, Link *link, Msg *m, double nbytes, i64 num_reqs, double now) {
    double start = link->free_s;
    if (now > start) start = now;
    Node *src = link->src >= 0 ? &c->nodes[link->src] : NULL;
    if (src && src->nic_out_free > start) start = src->nic_out_free;
    if (link->dst < 0) { /* tokens back to the coordinator */
        double done = start + nbytes / link->bps;
        link->free_s = done;
        if (src) src->nic_out_free = done;
        heap_push(&c->heap, done + link->latency_s, c->counter++, EV_TOKENS, 0, m);
        return;
    }
    Node *dst = &c->nodes[link->dst];
    if (dst->nic_in_free > start) start = dst->nic_in_free;
    double done = start + nbytes / link->bps;
    link->free_s = done;
    if (src) src->nic_out_free = done;
    dst->nic_in_free = done;
    double arrival = done + link->latency_s;
    dst->queued += num_reqs;
    if (dst->busy || arrival >= dst->wake_at) {
        heap_push(&dst->pending, arrival, c->counter++, 0, 0, m);
    } else if (link->direct && dst->wake_at == INFINITY) {
        begin(c, dst, arrival, m, arrival);
    } else {
        heap_push(&dst->pending, arrival, c->counter++, 0, 0, m);
        dst->wake_at = arrival;
        heap_push(&c->heap, arrival, c->counter++, EV_WAKE, link->dst, NULL);
    }
}

static void next_iteration(Core *c, Node *node, double now) {
    Heap *pending = &node->pending;
    if (pending->n && pending->a[0].t <= now && !node->dq_head && !node->pq_head) {
        Ev e = heap_pop(pending);
        if (!pending->n || pending->a[0].t > now) {
            begin(c, node, now, (Msg *)e.ptr, e.t);
            return;
        }
        heap_push(pending, e.t, e.seq, 0, 0, e.ptr);
    }
    collect(c, node, now);
}

static Packet *split(Packet *packet, i64 count) {
    int n = (int)count;
    i64 ctx = 0;
    for (int i = 0; i < n; i++) ctx += packet->reqs[i]->prompt + packet->reqs[i]->done;
    Packet *taken =
        packet_new(packet->reqs, n, packet->route, 0, count, ctx, 0, packet->step_start);
    taken->hop = packet->hop;
    taken->arrived = packet->arrived;
    memmove(packet->reqs, packet->reqs + n, sizeof(Req *) * (size_t)(packet->nreqs - n));
    packet->nreqs -= n;
    packet->tokens -= count;
    packet->ctx -= ctx;
    return taken;
}

static void start_iteration(Core *c, Node *node, double now) {
    int nb = 0;
    i64 num_seqs = 0, ctx = 0;
    while (node->dq_head && num_seqs < c->batch_cap) {
        Packet *packet = node->dq_head;
        if (num_seqs + packet->tokens > c->batch_cap)
            packet = split(packet, c->batch_cap - num_seqs);
        else
            queue_popleft(&node->dq_head, &node->dq_tail);
        num_seqs += packet->tokens;
        ctx += packet->ctx;
        VEC_PUSH(c->tmp_c, nb, c->tmp_c_alloc, packet);
    }
    i64 num_prompt = 0, sq = 0;
    while (node->pq_head && (num_prompt == 0 || num_prompt + node->pq_head->tokens <= c->prompt_cap)) {
        Packet *packet = queue_popleft(&node->pq_head, &node->pq_tail);
        num_prompt += packet->tokens;
        sq += packet->sq;
        VEC_PUSH(c->tmp_c, nb, c->tmp_c_alloc, packet);
    }
    run_batch(c, node, now, c->tmp_c, nb, num_seqs, ctx, num_prompt, sq);
}

static void collect(Core *c, Node *node, double now) {
    Heap *pending = &node->pending;
    if (pending->n && pending->a[0].t <= now) {
        if (!node->dq_head && !node->pq_head) { /* the batch is what landed, if it fits one */
            int nb = 0, np = 0;
            i64 num_seqs = 0, ctx = 0, num_prompt = 0, sq = 0;
            while (pending->n && pending->a[0].t <= now) {
                Ev e = heap_pop(pending);
                Msg *m = e.ptr;
                for (int i = 0; i < m->n; i++) {
                    Packet *p = m->p[i];
                    p->arrived = e.t;
                    if (p->is_prompt) {
                        VEC_PUSH(c->tmp_b, np, c->tmp_b_alloc, p);
                        num_prompt += p->tokens;
                        sq += p->sq;
                    } else {
                        VEC_PUSH(c->tmp_a, nb, c->tmp_a_alloc, p);
                        num_seqs += p->tokens;
                        ctx += p->ctx;
                    }
                }
                free(m);
            }
            if (num_seqs <= c->batch_cap && (np < 2 || num_prompt <= c->prompt_cap)) {
                for (int i = 0; i < np; i++) VEC_PUSH(c->tmp_a, nb, c->tmp_a_alloc, c->tmp_b[i]);
                run_batch(c, node, now, c->tmp_a, nb, num_seqs, ctx, num_prompt, sq);
                return;
            }
            for (int i = 0; i < nb; i++) queue_append(&node->dq_head, &node->dq_tail, c->tmp_a[i]);
            for (int i = 0; i < np; i++) queue_append(&node->pq_head, &node->pq_tail, c->tmp_b[i]);
        } else {
            while (pending->n && pending->a[0].t <= now) {
                Ev e = heap_pop(pending);
                Msg *m = e.ptr;
                for (int i = 0; i < m->n; i++) {
                    Packet *p = m->p[i];
                    p->arrived = e.t;
                    if (p->is_prompt) queue_append(&node->pq_head, &node->pq_tail, p);
                    else queue_append(&node->dq_head, &node->dq_tail, p);
                }
                free(m);
            }
        }
    }
    if (node->dq_head || node->pq_head) {
        start_iteration(c, node, now);
    } else if (pending->n && pending->a[0].t < node->wake_at) {
        double at = pending->a[0].t;
        if (at <= node->nic_in_free + node->lat_in_min) {
            next_iteration(c, node, at);
        } else {
            node->wake_at = at;
            heap_push(&c->heap, at, c->counter++, EV_WAKE, node_index(c, node), NULL);
        }
    }
}

static void wake(Core *c, Node *node, double now) {
    node->wake_at = INFINITY;
    if (!node->busy) next_iteration(c, node, now);
}

/* One transfer per next hop, carrying every packet bound there (in batch order). */
static void send_outputs(Core *c, Node *node, double now) {
    int ng = 0;
    for (int i = 0; i < node->nbatch; i++) {
        Packet *p = node->batch[i];
        int hop = ++p->hop;
        Link *link = p->route->out[hop - 1];
        int g = 0;
        while (g < ng && c->sends[g].link != link) g++;
        if (g == ng) {
            GROW_ZEROED(c->sends, c->sends_alloc, ng);
            c->sends[g].link = link;
            c->sends[g].n = 0;
            ng++;
        }
        OutGroup *group = &c->sends[g];
        VEC_PUSH(group->p, group->n, group->cap, p);
    }
    i64 sent = 0;
    for (int g = 0; g < ng; g++) {
        OutGroup *group = &c->sends[g];
        i64 tokens = 0, num_reqs = 0;
        for (int i = 0; i < group->n; i++) {
            tokens += group->p[i]->tokens;
            num_reqs += group->p[i]->nreqs;
        }
        sent += num_reqs;
        i64 nbytes = group->link->dst < 0 ? c->token_bytes * num_reqs : c->act_bytes * tokens;
        transfer(c, group->link, msg_new(group->p, group->n), (double)nbytes, num_reqs, now);
    }
    node->queued -= sent;
}

static int finish(Core *c, Node *node, double now) {
    node->busy = 0;
    node->iterations += 1;
    double start = node->iter_start;
    if (now > c->win_start && start < c->win_end) {
        double end = c->win_end;
        node->busy_s += (now < end ? now : end) - (start > c->win_start ? start : c->win_start);
    }
    if (c->observe != Py_None) { /* before sending: a next hop may start on them at once */
        double total = 0.0;
        for (int i = 0; i < node->nbatch; i++) total += now - node->batch[i]->arrived;
        PyObject *r = PyObject_CallFunction(c->observe, "id", node_index(c, node),
                                            total / (double)node->nbatch);
        if (r == NULL) return -1;
        Py_DECREF(r);
    }
    if (node->nbatch != 1) {
        send_outputs(c, node, now);
    } else {
        Packet *p = node->batch[0];
        int hop = ++p->hop;
        i64 num_reqs = p->nreqs;
        node->queued -= num_reqs;
        Link *link = p->route->out[hop - 1];
        i64 nbytes = link->dst < 0 ? c->token_bytes * num_reqs : c->act_bytes * p->tokens;
        transfer(c, link, msg_new(&p, 1), (double)nbytes, num_reqs, now);
    }
    if (node->pending.n || node->dq_head || node->pq_head) next_iteration(c, node, now);
    return 0;
}

/* ---- recorder (sim_metrics.Recorder) ------------------------------------------------------- */

static void rec_decode_step(Core *c, double now, double latency_s, i64 num_tokens) {
    i64 index = (i64)(now / c->bin_s);
    c->decode_bins[index < c->nbins ? index : c->nbins - 1] += num_tokens;
    if (c->win_start <= now && now <= c->win_end) {
        c->decode_tokens += num_tokens;
        VEC_PUSH(c->step_latency, c->nsteps, c->steps_alloc, latency_s);
        VEC_PUSH(c->step_weight, c->nweights, c->weights_alloc, num_tokens);
    }
}

static void rec_first_token(Core *c, double now, double ttft_s, i64 prompt_tokens) {
    i64 index = (i64)(now / c->bin_s);
    c->prompt_bins[index < c->nbins - 1 ? index : c->nbins - 1] += prompt_tokens;
    if (c->win_start <= now && now <= c->win_end) {
        c->prompt_tokens += prompt_tokens;
        VEC_PUSH(c->ttft, c->nttft, c->ttft_alloc, ttft_s);
    }
}

static double overlap(Core *c, double t0, double t1) {
    double hi = c->win_end < t1 ? c->win_end : t1;   /* min(t1, end) */
    double lo = c->win_start > t0 ? c->win_start : t0; /* max(t0, start) */
    double d = hi - lo;
    return d > 0.0 ? d : 0.0;
}

/* ---- coordinator (sim_coordinator.py) ------------------------------------------------------ */

static void kv_change(Core *c, Node *node, i64 delta, double now) {
    node->kv_area += (double)node->kv_used * overlap(c, node->kv_last, now);
    node->kv_last = now;
    node->kv_used += delta;
    if (node->kv_used > node->kv_peak) node->kv_peak = node->kv_used;
}

static void outbox_add(Core *c, int v, Packet *p) {
    int slot = c->outbox_slot[v];
    if (slot < 0) {
        GROW_ZEROED(c->outbox, c->outbox_alloc, c->noutbox);
        slot = c->outbox_slot[v] = c->noutbox++;
        c->outbox[slot].link = c->source_link[v];
        c->outbox[slot].n = 0;
    }
    OutGroup *group = &c->outbox[slot];
    VEC_PUSH(group->p, group->n, group->cap, p);
}

static void flush(Core *c, double now) {
    int n = c->noutbox;
    c->noutbox = 0;
    for (int g = 0; g < n; g++) {
        OutGroup *group = &c->outbox[g];
        c->outbox_slot[group->link->dst] = -1;
        i64 tokens = 0, num_reqs = 0;
        for (int i = 0; i < group->n; i++) {
            tokens += group->p[i]->tokens;
            num_reqs += group->p[i]->nreqs;
        }
        transfer(c, group->link, msg_new(group->p, group->n), (double)(c->token_bytes * tokens),
                 num_reqs, now);
    }
}

static void resident_add(Core *c, Req *r) {
    r->next = c->resident.next;
    r->prev = &c->resident;
    c->resident.next->prev = r;
    c->resident.next = r;
    c->num_resident++;
}

static void resident_remove(Core *c, Req *r) {
    r->prev->next = r->next;
    r->next->prev = r->prev;
    c->num_resident--;
}

static void waiting_append(Core *c, Req *r) {
    r->next = NULL;
    if (c->wait_tail) c->wait_tail->next = r;
    else c->wait_head = r;
    c->wait_tail = r;
    c->num_waiting++;
}

static Req *waiting_popleft(Core *c) {
    Req *r = c->wait_head;
    c->wait_head = r->next;
    if (!c->wait_head) c->wait_tail = NULL;
    c->num_waiting--;
    return r;
}

/* A new request with drawn lengths; NULL at the request limit (or, with an error set, when the
 * draw failed). */
static Req *new_request(Core *c, double now, int *error) {
    *error = 0;
    if (c->limit >= 0 && c->num_created >= c->limit) return NULL;
    c->num_created++;
    PyObject *r = PyObject_CallNoArgs(c->draw);
    if (r == NULL) {
        *error = 1;
        return NULL;
    }
    long long prompt, output;
    if (!PyArg_ParseTuple(r, "LL", &prompt, &output)) {
        Py_DECREF(r);
        *error = 1;
        return NULL;
    }
    Py_DECREF(r);
    Req *req = xmalloc(sizeof(Req));
    req->arrival_s = now;
    req->prompt = prompt;
    req->output = output;
    req->done = 0;
    req->route = NULL;
    req->prev = req->next = NULL;
    return req;
}

static void reserve(Core *c, Req *req, Route *route, double now) {
    req->route = route;
    i64 need = req->prompt + req->output;
    for (int i = 0; i < route->n; i++) {
        Node *node = &c->nodes[route->nodes[i]];
        kv_change(c, node, need * route->layers[i], now);
        node->seats += 1;
    }
    resident_add(c, req);
    c->num_admitted++;
    c->prefilling++;
    i64 prompt = req->prompt;
    Packet *packet = packet_new(&req, 1, route, 1, prompt, 0, prompt * prompt, now);
    outbox_add(c, route->nodes[0], packet);
}

static void release(Core *c, Req *req, double now) {
    Route *route = req->route;
    i64 need = req->prompt + req->output;
    for (int i = 0; i < route->n; i++) {
        Node *node = &c->nodes[route->nodes[i]];
        kv_change(c, node, -need * route->layers[i], now);
        node->seats -= 1;
    }
    resident_remove(c, req);
    c->num_completed++;
    free(req);
}

#define MAX_DROPS_IN_A_ROW 1000

static int admit(Core *c, double now) {
    while (!(c->offline && c->prefilling >= c->max_prefilling)) {
        if (!c->wait_head) {
            if (!c->offline) return 0;
            int error;
            Req *fresh = new_request(c, now, &error);
            if (error) return -1;
            if (fresh == NULL) return 0;
            waiting_append(c, fresh);
        }
        Req *req = c->wait_head;
        i64 need = req->prompt + req->output;
        PyObject *r = PyObject_CallFunction(c->route_cb, "L", need);
        if (r == NULL) return -1;
        if (r == Py_None) {
            Py_DECREF(r);
            if (c->num_resident) return 0;
            waiting_popleft(c);
            c->num_dropped++;
            c->drops_in_row++;
            if (c->drops_in_row >= MAX_DROPS_IN_A_ROW) {
                PyErr_Format(PyExc_ValueError,
                             "lengths: %lld requests in a row fit no route's KV cache (last: "
                             "%lld + %lld tokens); use shorter requests or a plan with more "
                             "memory per node",
                             c->drops_in_row, req->prompt, req->output);
                free(req);
                return -1;
            }
            free(req);
            continue;
        }
        long rid = PyLong_AsLong(r);
        Py_DECREF(r);
        if (rid == -1 && PyErr_Occurred()) return -1;
        if (rid < 0 || rid >= c->nroutes) {
            PyErr_SetString(PyExc_RuntimeError, "route callback returned an unknown route id");
            return -1;
        }
        c->drops_in_row = 0;
        waiting_popleft(c);
        reserve(c, req, c->routes[rid], now);
    }
    return 0;
}

static int receive(Core *c, Msg *m, double now) {
    int ng = 0;
    int freed = 0;
    c->stamp++;
    for (int i = 0; i < m->n; i++) {
        Packet *packet = m->p[i];
        Req **reqs = packet->reqs;
        int n = packet->nreqs, kept = 0;
        if (packet->is_prompt) {
            c->prefilling -= n;
            freed = freed || c->offline;
            for (int j = 0; j < n; j++)
                rec_first_token(c, now, now - reqs[j]->arrival_s, reqs[j]->prompt);
            kept = n;
        } else {
            rec_decode_step(c, now, now - packet->step_start, n);
            for (int j = 0; j < n; j++) {
                Req *request = reqs[j];
                i64 done = request->done = request->done + 1;
                if (done >= request->output) {
                    release(c, request, now);
                    freed = 1;
                } else {
                    reqs[kept++] = request; /* survivors, in order */
                }
            }
        }
        if (kept) {
            Route *route = packet->route;
            if (route->stamp != c->stamp) {
                route->stamp = c->stamp;
                route->slot = ng;
                GROW_ZEROED(c->groups, c->ngroups_alloc, ng);
                c->groups[ng].route = route;
                c->groups[ng].n = 0;
                ng++;
            }
            Group *group = &c->groups[route->slot];
            for (int j = 0; j < kept; j++) VEC_PUSH(group->reqs, group->n, group->cap, reqs[j]);
        }
        packet_free(packet);
    }
    free(m);
    for (int g = 0; g < ng; g++) {
        Group *group = &c->groups[g];
        i64 ctx = 0;
        for (int j = 0; j < group->n; j++) ctx += group->reqs[j]->prompt + group->reqs[j]->done;
        Packet *packet = packet_new(group->reqs, group->n, group->route, 0, group->n, ctx, 0, now);
        outbox_add(c, group->route->nodes[0], packet);
    }
    if (freed && admit(c, now) < 0) return -1;
    flush(c, now);
    return 0;
}

static int arrival(Core *c, double now) {
    int error;
    Req *req = new_request(c, now, &error);
    if (error) return -1;
    if (req == NULL) return 0;
    waiting_append(c, req);
    if (admit(c, now) < 0) return -1;
    flush(c, now);
    if (c->limit < 0 || c->num_created < c->limit) {
        PyObject *r = PyObject_CallFunction(c->next_after, "d", now);
        if (r == NULL) return -1;
        double at = PyFloat_AsDouble(r);
        Py_DECREF(r);
        if (at == -1.0 && PyErr_Occurred()) return -1;
        heap_push(&c->heap, at, c->counter++, EV_ARRIVAL, 0, NULL);
    }
    return 0;
}

/* ---- the Python type ----------------------------------------------------------------------- */

static int parse_points(PyObject *seq, Pts *out, const char *what) {
    out->p = NULL;
    out->n = 0;
    PyObject *fast = PySequence_Fast(seq, what);
    if (fast == NULL) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    out->p = xmalloc(sizeof(Pt) * (size_t)(n ? n : 1));
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        long long x;
        double y;
        if (!PyArg_ParseTuple(item, "Ld", &x, &y)) {
            Py_DECREF(fast);
            return -1;
        }
        out->p[i].x = x;
        out->p[i].y = y;
    }
    out->n = (int)n;
    Py_DECREF(fast);
    return 0;
}

static void free_cost(Cost *cost) {
    free(cost->prompt.p);
    free(cost->decode.p);
    free(cost->head.p);
    free(cost->prompt_pass.p);
    free(cost->decode_pass.p);
}

/* cost: (kind, a, b, c, d, stage) where stage is None or (layers, head, prompt_pass, decode_pass)
 * roofline: (0, weights_s, kv_s, token_s, attn_s); table: (1, prompt_pts, decode_pts, 0, 0);
 * token rate: (2, token_s, floor_s, 0, 0) */
static int parse_cost(PyObject *tuple, Cost *cost) {
    memset(cost, 0, sizeof(Cost));
    int kind;
    PyObject *a, *b, *cc, *d, *stage;
    if (!PyArg_ParseTuple(tuple, "iOOOOO", &kind, &a, &b, &cc, &d, &stage)) return -1;
    cost->kind = kind;
    if (kind == COST_ROOFLINE) {
        cost->weights_s = PyFloat_AsDouble(a);
        cost->kv_s = PyFloat_AsDouble(b);
        cost->token_s = PyFloat_AsDouble(cc);
        cost->attn_s = PyFloat_AsDouble(d);
    } else if (kind == COST_TABLE) {
        if (parse_points(a, &cost->prompt, "prompt table") < 0) return -1;
        if (parse_points(b, &cost->decode, "decode table") < 0) return -1;
        if (cost->prompt.n == 0 || cost->decode.n == 0) {
            PyErr_SetString(PyExc_ValueError, "empty cost table");
            return -1;
        }
    } else if (kind == COST_RATE) {
        cost->token_s = PyFloat_AsDouble(a);
        cost->floor_s = PyFloat_AsDouble(b);
    } else {
        PyErr_SetString(PyExc_ValueError, "unknown cost kind");
        return -1;
    }
    if (PyErr_Occurred()) return -1;
    if (stage != Py_None) {
        PyObject *head, *pp, *dp;
        long long layers;
        if (!PyArg_ParseTuple(stage, "LOOO", &layers, &head, &pp, &dp)) return -1;
        cost->stage = 1;
        cost->stage_layers = layers;
        if (parse_points(head, &cost->head, "head table") < 0) return -1;
        if (parse_points(pp, &cost->prompt_pass, "prompt pass table") < 0) return -1;
        if (parse_points(dp, &cost->decode_pass, "decode pass table") < 0) return -1;
    }
    return 0;
}

static void free_msg_packets(Msg *m) {
    for (int i = 0; i < m->n; i++) packet_free(m->p[i]);
    free(m);
}

static void Core_dealloc(Core *c) {
    for (int i = 0; i < c->heap.n; i++)
        if (c->heap.a[i].kind == EV_TOKENS) free_msg_packets(c->heap.a[i].ptr);
    free(c->heap.a);
    if (c->nodes) {
        for (int v = 0; v < c->nn; v++) {
            Node *node = &c->nodes[v];
            for (int i = 0; i < node->pending.n; i++) free_msg_packets(node->pending.a[i].ptr);
            free(node->pending.a);
            while (node->dq_head) packet_free(queue_popleft(&node->dq_head, &node->dq_tail));
            while (node->pq_head) packet_free(queue_popleft(&node->pq_head, &node->pq_tail));
            if (node->busy)
                for (int i = 0; i < node->nbatch; i++) packet_free(node->batch[i]);
            free(node->batch);
            free_cost(&node->cost);
        }
        free(c->nodes);
    }
    free(c->links);
    if (c->succ_v) {
        for (int i = 0; i <= c->nn; i++) {
            free(c->succ_v[i]);
            free(c->succ_layers[i]);
        }
    }
    free(c->succ_v);
    free(c->succ_layers);
    free(c->succ_n);
    free(c->source_link);
    for (int i = 0; i < c->nroutes; i++) {
        free(c->routes[i]->nodes);
        free(c->routes[i]->layers);
        free(c->routes[i]->out);
        free(c->routes[i]);
    }
    free(c->routes);
    while (c->wait_head) free(waiting_popleft(c));
    if (c->resident.next) {
        Req *r = c->resident.next;
        while (r != &c->resident) {
            Req *next = r->next;
            free(r);
            r = next;
        }
    }
    for (int g = 0; g < c->outbox_alloc; g++) {
        for (int i = 0; i < c->outbox[g].n; i++) packet_free(c->outbox[g].p[i]);
        free(c->outbox[g].p);
    }
    free(c->outbox);
    free(c->outbox_slot);
    for (int g = 0; g < c->ngroups_alloc; g++) free(c->groups[g].reqs);
    free(c->groups);
    for (int g = 0; g < c->sends_alloc; g++) free(c->sends[g].p);
    free(c->sends);
    free(c->decode_bins);
    free(c->prompt_bins);
    free(c->ttft);
    free(c->step_latency);
    free(c->step_weight);
    free(c->tmp_a);
    free(c->tmp_b);
    free(c->tmp_c);
    free(c->partial_keys);
    free(c->partial_sums);
    Py_XDECREF(c->draw);
    Py_XDECREF(c->next_after);
    Py_XDECREF(c->route_cb);
    Py_XDECREF(c->observe);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

/* Core(nodes, links, succ, source_links, params, draw, next_after, route, observe)
 *   nodes: [(num_layers, kv_capacity, lat_in_min, empty_prompt_s, empty_decode_s, cost)]
 *   links: [(bps, latency_s, src, dst, direct)]          (src/dst -1 for the coordinator)
 *   succ: [(at, [(v, layers), ...])]                       (at -1: SOURCE; v -2: SINK)
 *   source_links: [(v, link index)]
 *   params: (batch_cap, prompt_cap, act_bytes, token_bytes, partial, win_start, win_end, end_s,
 *            seats_limit (-1: none), limit (-1: none), max_prefilling, offline, bin_s, num_bins)
 */
static int Core_init(Core *c, PyObject *args, PyObject *kwargs) {
    PyObject *nodes, *links, *succ, *source_links, *params, *draw, *next_after, *route_cb,
        *observe;
    if (c->nodes != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Core is already initialised");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "OOOOOOOOO", &nodes, &links, &succ, &source_links, &params, &draw,
                          &next_after, &route_cb, &observe))
        return -1;
    c->resident.next = c->resident.prev = &c->resident;
    long long batch_cap, prompt_cap, act_bytes, token_bytes, seats_limit, limit, max_prefilling;
    int partial, offline, nbins;
    double win_start, win_end, end_s, bin_s;
    if (!PyArg_ParseTuple(params, "LLLLpdddLLLpdi", &batch_cap, &prompt_cap, &act_bytes,
                          &token_bytes, &partial, &win_start, &win_end, &end_s, &seats_limit,
                          &limit, &max_prefilling, &offline, &bin_s, &nbins))
        return -1;
    c->batch_cap = batch_cap;
    c->prompt_cap = prompt_cap;
    c->act_bytes = act_bytes;
    c->token_bytes = token_bytes;
    c->partial = partial;
    c->win_start = win_start;
    c->win_end = win_end;
    c->end_s = end_s;
    c->seats_limit = seats_limit < 0 ? LLONG_MAX : seats_limit;
    c->limit = limit;
    c->max_prefilling = max_prefilling;
    c->offline = offline;
    c->bin_s = bin_s;
    c->nbins = nbins < 1 ? 1 : nbins;
    c->decode_bins = calloc((size_t)c->nbins, sizeof(i64));
    c->prompt_bins = calloc((size_t)c->nbins, sizeof(i64));
    if (!c->decode_bins || !c->prompt_bins) {
        PyErr_NoMemory();
        return -1;
    }

    PyObject *fast = PySequence_Fast(nodes, "nodes");
    if (fast == NULL) return -1;
    int nn = (int)PySequence_Fast_GET_SIZE(fast);
    c->nodes = calloc((size_t)(nn ? nn : 1), sizeof(Node));
    c->nn = nn;
    for (int v = 0; v < nn; v++) {
        Node *node = &c->nodes[v];
        long long layers, cap;
        PyObject *cost;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, v), "LLdddO", &layers, &cap,
                              &node->lat_in_min, &node->empty_prompt_s, &node->empty_decode_s,
                              &cost) ||
            parse_cost(cost, &node->cost) < 0) {
            Py_DECREF(fast);
            return -1;
        }
        node->num_layers = layers;
        node->kv_capacity = cap;
        node->wake_at = INFINITY;
    }
    Py_DECREF(fast);

    fast = PySequence_Fast(links, "links");
    if (fast == NULL) return -1;
    int nl = (int)PySequence_Fast_GET_SIZE(fast);
    c->links = calloc((size_t)(nl ? nl : 1), sizeof(Link));
    c->nl = nl;
    for (int i = 0; i < nl; i++) {
        Link *link = &c->links[i];
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "ddiip", &link->bps,
                              &link->latency_s, &link->src, &link->dst, &link->direct)) {
            Py_DECREF(fast);
            return -1;
        }
        if (link->src >= nn || link->dst >= nn || link->src < -1 || link->dst < -1) {
            Py_DECREF(fast);
            PyErr_SetString(PyExc_ValueError, "link endpoint out of range");
            return -1;
        }
    }
    Py_DECREF(fast);

    c->succ_v = calloc((size_t)nn + 1, sizeof(int *));
    c->succ_layers = calloc((size_t)nn + 1, sizeof(i64 *));
    c->succ_n = calloc((size_t)nn + 1, sizeof(int));
    fast = PySequence_Fast(succ, "succ");
    if (fast == NULL) return -1;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); i++) {
        int at;
        PyObject *list;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "iO", &at, &list)) {
            Py_DECREF(fast);
            return -1;
        }
        if (at < -1 || at >= nn) {
            Py_DECREF(fast);
            PyErr_SetString(PyExc_ValueError, "succ: node out of range");
            return -1;
        }
        PyObject *inner = PySequence_Fast(list, "successors");
        if (inner == NULL) {
            Py_DECREF(fast);
            return -1;
        }
        int m = (int)PySequence_Fast_GET_SIZE(inner);
        c->succ_v[at + 1] = xmalloc(sizeof(int) * (size_t)(m ? m : 1));
        c->succ_layers[at + 1] = xmalloc(sizeof(i64) * (size_t)(m ? m : 1));
        c->succ_n[at + 1] = m;
        for (int j = 0; j < m; j++) {
            int v;
            long long layers;
            if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(inner, j), "iL", &v, &layers)) {
                Py_DECREF(inner);
                Py_DECREF(fast);
                return -1;
            }
            c->succ_v[at + 1][j] = v;
            c->succ_layers[at + 1][j] = layers;
        }
        Py_DECREF(inner);
    }
    Py_DECREF(fast);

    c->source_link = calloc((size_t)(nn ? nn : 1), sizeof(Link *));
    c->outbox_slot = xmalloc(sizeof(int) * (size_t)(nn ? nn : 1));
    for (int v = 0; v < nn; v++) c->outbox_slot[v] = -1;
    fast = PySequence_Fast(source_links, "source_links");
    if (fast == NULL) return -1;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); i++) {
        int v, li;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "ii", &v, &li)) {
            Py_DECREF(fast);
            return -1;
        }
        if (v < 0 || v >= nn || li < 0 || li >= nl) {
            Py_DECREF(fast);
            PyErr_SetString(PyExc_ValueError, "source_links: index out of range");
            return -1;
        }
        c->source_link[v] = &c->links[li];
    }
    Py_DECREF(fast);

    Py_INCREF(draw);
    c->draw = draw;
    Py_INCREF(next_after);
    c->next_after = next_after;
    Py_INCREF(route_cb);
    c->route_cb = route_cb;
    Py_INCREF(observe);
    c->observe = observe;
    return 0;
}

/* add_route(nodes, layers, out_links) -> id: out_links[h] is the link index from hop h onward */
static PyObject *Core_add_route(Core *c, PyObject *args) {
    PyObject *nodes, *layers, *outs;
    if (!PyArg_ParseTuple(args, "OOO", &nodes, &layers, &outs)) return NULL;
    PyObject *fn = PySequence_Fast(nodes, "nodes");
    PyObject *fl = PySequence_Fast(layers, "layers");
    PyObject *fo = PySequence_Fast(outs, "out_links");
    if (!fn || !fl || !fo) goto fail;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fn);
    if (n < 1 || PySequence_Fast_GET_SIZE(fl) != n || PySequence_Fast_GET_SIZE(fo) != n) {
        PyErr_SetString(PyExc_ValueError, "add_route: nodes, layers, out_links must match");
        goto fail;
    }
    Route *route = xmalloc(sizeof(Route));
    route->n = (int)n;
    route->nodes = xmalloc(sizeof(int) * (size_t)n);
    route->layers = xmalloc(sizeof(i64) * (size_t)n);
    route->out = xmalloc(sizeof(Link *) * (size_t)n);
    route->stamp = 0;
    route->slot = 0;
    route->id = c->nroutes;
    for (Py_ssize_t i = 0; i < n; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(fn, i));
        long long k = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(fl, i));
        long li = PyLong_AsLong(PySequence_Fast_GET_ITEM(fo, i));
        if (PyErr_Occurred() || v < 0 || v >= c->nn || li < 0 || li >= c->nl ||
            (i == 0 && c->source_link[v] == NULL)) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "add_route: bad index");
            free(route->nodes);
            free(route->layers);
            free(route->out);
            free(route);
            goto fail;
        }
        route->nodes[i] = (int)v;
        route->layers[i] = k;
        route->out[i] = &c->links[li];
    }
    if (c->nroutes == c->routes_alloc) {
        c->routes_alloc = c->routes_alloc ? 2 * c->routes_alloc : 64;
        c->routes = xrealloc(c->routes, sizeof(Route *) * (size_t)c->routes_alloc);
    }
    c->routes[c->nroutes++] = route;
    Py_DECREF(fn);
    Py_DECREF(fl);
    Py_DECREF(fo);
    return PyLong_FromLong(c->nroutes - 1);
fail:
    Py_XDECREF(fn);
    Py_XDECREF(fl);
    Py_XDECREF(fo);
    return NULL;
}

/* feasible(at, need) -> successors of `at` with room for `need` tokens per layer run */
static PyObject *Core_feasible(Core *c, PyObject *args) {
    int at;
    long long need;
    if (!PyArg_ParseTuple(args, "iL", &at, &need)) return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    if (at < -1 || at >= c->nn) return out;
    int m = c->succ_n[at + 1];
    for (int j = 0; j < m; j++) {
        int v = c->succ_v[at + 1][j];
        if (v >= 0) {
            Node *node = &c->nodes[v];
            if (!(node->seats < c->seats_limit &&
                  node->kv_used + need * c->succ_layers[at + 1][j] <= node->kv_capacity))
                continue;
        }
        PyObject *item = PyLong_FromLong(v);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(item);
    }
    return out;
}

static PyObject *Core_queued(Core *c, PyObject *arg) {
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred()) return NULL;
    if (v < 0 || v >= c->nn) {
        PyErr_SetString(PyExc_IndexError, "node index out of range");
        return NULL;
    }
    return PyLong_FromLongLong(c->nodes[v].queued);
}

static PyObject *Core_run(Core *c, PyObject *Py_UNUSED(ignored)) {
    if (c->ran) {
        PyErr_SetString(PyExc_RuntimeError, "a Core runs once");
        return NULL;
    }
    c->ran = 1;
    double end = c->end_s, now = c->now;
    c->last_s = end;
    if (c->offline) {
        if (admit(c, 0.0) < 0) return NULL;
        flush(c, 0.0);
    } else {
        PyObject *r = PyObject_CallFunction(c->next_after, "d", 0.0);
        if (r == NULL) return NULL;
        double at = PyFloat_AsDouble(r);
        Py_DECREF(r);
        if (at == -1.0 && PyErr_Occurred()) return NULL;
        heap_push(&c->heap, at, c->counter++, EV_ARRIVAL, 0, NULL);
    }
    i64 count = 0;
    int status = 0, drained = 1;
    while (c->heap.n) {
        Ev e = heap_pop(&c->heap);
        if (e.t > end) { /* put it back (dealloc frees it) and take unstarted steps back out */
            heap_push(&c->heap, e.t, e.seq, e.kind, e.idx, e.ptr);
            for (int v = 0; v < c->nn; v++) {
                Node *node = &c->nodes[v];
                if (node->busy && node->iter_start > end)
                    for (int i = 0; i < node->nbatch; i++)
                        if (!node->batch[i]->is_prompt) node->decode_seqs -= node->batch[i]->tokens;
            }
            drained = 0;
            break;
        }
        count++;
        now = e.t;
        switch (e.kind) {
        case EV_DONE:
            status = finish(c, &c->nodes[e.idx], now);
            break;
        case EV_WAKE:
            wake(c, &c->nodes[e.idx], now);
            break;
        case EV_TOKENS:
            status = receive(c, (Msg *)e.ptr, now);
            break;
        default:
            status = arrival(c, now);
            break;
        }
        if (status < 0) break;
    }
    if (drained && status == 0) c->last_s = now;
    c->now = now;
    c->num_events += count;
    if (status < 0) return NULL;
    Py_RETURN_NONE;
}

/* A list of Python ints (`ints`) or floats (`floats`): give one of the two arrays. */
static PyObject *number_list(const i64 *ints, const double *floats, i64 n) {
    PyObject *out = PyList_New((Py_ssize_t)n);
    if (out == NULL) return NULL;
    for (i64 i = 0; i < n; i++) {
        PyObject *item = ints ? PyLong_FromLongLong(ints[i]) : PyFloat_FromDouble(floats[i]);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, (Py_ssize_t)i, item);
    }
    return out;
}

/* nodes() -> [(busy, iter_start, busy_s, iterations, decode_seqs, queued, kv_used, kv_peak,
 *              kv_area, kv_last, seats)] */
static PyObject *Core_nodes(Core *c, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyList_New(c->nn);
    if (out == NULL) return NULL;
    for (int v = 0; v < c->nn; v++) {
        Node *n = &c->nodes[v];
        PyObject *item = Py_BuildValue("(NddLLLLLddL)", PyBool_FromLong(n->busy), n->iter_start,
                                       n->busy_s, n->iterations, n->decode_seqs, n->queued,
                                       n->kv_used, n->kv_peak, n->kv_area, n->kv_last, n->seats);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, v, item);
    }
    return out;
}

/* recorder() -> (decode_bins, prompt_bins, decode_tokens, prompt_tokens, ttft, step_latency,
 *                step_weight) */
static PyObject *Core_recorder(Core *c, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("(NNLLNNN)", number_list(c->decode_bins, NULL, c->nbins),
                         number_list(c->prompt_bins, NULL, c->nbins), c->decode_tokens,
                         c->prompt_tokens, number_list(NULL, c->ttft, c->nttft),
                         number_list(NULL, c->step_latency, c->nsteps),
                         number_list(c->step_weight, NULL, c->nweights));
}

/* coordinator() -> dict of counters, `waiting` [(arrival_s, prompt, output)] and `resident`
 * [(arrival_s, prompt, output, done, route id)] */
static PyObject *Core_coordinator(Core *c, PyObject *Py_UNUSED(ignored)) {
    PyObject *waiting = PyList_New(0), *resident = PyList_New(0);
    if (!waiting || !resident) goto fail;
    for (Req *r = c->wait_head; r; r = r->next) {
        PyObject *item = Py_BuildValue("(dLL)", r->arrival_s, r->prompt, r->output);
        if (item == NULL || PyList_Append(waiting, item) < 0) {
            Py_XDECREF(item);
            goto fail;
        }
        Py_DECREF(item);
    }
    for (Req *r = c->resident.next; r && r != &c->resident; r = r->next) {
        long rid = r->route ? r->route->id : -1;
        PyObject *item =
            Py_BuildValue("(dLLLl)", r->arrival_s, r->prompt, r->output, r->done, rid);
        if (item == NULL || PyList_Append(resident, item) < 0) {
            Py_XDECREF(item);
            goto fail;
        }
        Py_DECREF(item);
    }
    return Py_BuildValue("{s:L,s:L,s:L,s:L,s:L,s:L,s:d,s:d,s:L,s:N,s:N}", "num_created",
                         c->num_created, "num_admitted", c->num_admitted, "num_completed",
                         c->num_completed, "num_dropped", c->num_dropped, "prefilling",
                         c->prefilling, "drops_in_row", c->drops_in_row, "now", c->now, "last_s",
                         c->last_s, "num_events", c->num_events, "waiting", waiting, "resident",
                         resident);
fail:
    Py_XDECREF(waiting);
    Py_XDECREF(resident);
    return NULL;
}

static PyMethodDef Core_methods[] = {
    {"add_route", (PyCFunction)Core_add_route, METH_VARARGS,
     "add_route(nodes, layers, out_links) -> route id"},
    {"feasible", (PyCFunction)Core_feasible, METH_VARARGS,
     "feasible(at, need) -> successors of `at` with KV room and a seat for the request"},
    {"queued", (PyCFunction)Core_queued, METH_O, "queued(node) -> requests bound for it"},
    {"run", (PyCFunction)Core_run, METH_NOARGS, "run the simulation to its end"},
    {"nodes", (PyCFunction)Core_nodes, METH_NOARGS, "per-node state after the run"},
    {"recorder", (PyCFunction)Core_recorder, METH_NOARGS, "the recorder's measurements"},
    {"coordinator", (PyCFunction)Core_coordinator, METH_NOARGS, "the coordinator's state"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "helix.planner._simcore.Core",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The simulator's event loop (see sim_native.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Core_init,
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_methods = Core_methods,
};

static struct PyModuleDef simcore_module = {
    PyModuleDef_HEAD_INIT, "_simcore", "The simulator's compiled event loop.", -1, NULL,
};

PyMODINIT_FUNC PyInit__simcore(void) {
    if (PyType_Ready(&CoreType) < 0) return NULL;
    PyObject *m = PyModule_Create(&simcore_module);
    if (m == NULL) return NULL;
    Py_INCREF(&CoreType);
    if (PyModule_AddObject(m, "Core", (PyObject *)&CoreType) < 0) {
        Py_DECREF(&CoreType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
