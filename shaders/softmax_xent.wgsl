// softmax_xent: softmax cross-entropy over negative distances, with its gradient, per-query
// correctness and the episode's mean loss and accuracy, in one dispatch.
//
// distances [queries, way] f32, labels [queries] u32. With logits l = -distances[q]:
//   nll_q                = -(l[label] - max(l) - log(sum_j exp(l_j - max(l))))
//   correct[q]           = 1.0 if the first argmax of l (first minimum distance) == label, else 0.0
//   grad_distances[q, j] = -(softmax(l)_j - onehot(label)_j) / queries   (d mean-NLL / d distance)
//   stats[0] = mean nll over queries, stats[1] = mean correct (accuracy)
// A label not below way (invalid input) makes that row's nll, and so stats[0], NaN.
// Dispatch: exactly ONE workgroup of 256 threads. Thread t handles rows t, t + 256, ... (each
// row's work is done by one thread, summing its rows' nll and correct in row order); then a
// workgroup-memory tree reduction (fixed order, deterministic) gives the two means.
// Whole buffers are bound; tensor views are passed as element offsets (`*_off`).

struct XentParams {
    queries: u32,
    way: u32,
    distances_off: u32,
    labels_off: u32,
    grad_off: u32,
    correct_off: u32,
    stats_off: u32,
}

@group(0) @binding(0) var<uniform> p: XentParams;
@group(0) @binding(1) var<storage, read> distances: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> grad_distances: array<f32>;
@group(0) @binding(4) var<storage, read_write> correct: array<f32>;
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;

const WG: u32 = 256u;
var<workgroup> nll_part: array<f32, 256>;
var<workgroup> correct_part: array<f32, 256>;

@compute @workgroup_size(256)
fn softmax_xent(@builtin(local_invocation_index) lid: u32) {
    let way = p.way;
    let q_count = f32(p.queries);
    var nll_sum = 0.0;
    var correct_sum = 0.0;
    for (var q = lid; q < p.queries; q += WG) {
        let row = p.distances_off + q * way;
        let label = labels[p.labels_off + q];
        // First minimum distance = first maximum logit.
        var best = 0u;
        var best_d = distances[row];
        for (var j = 1u; j < way; j++) {
            let d = distances[row + j];
            if (d < best_d) {
                best = j;
                best_d = d;
            }
        }
        let max_logit = -best_d;
        var sum = 0.0;
        for (var j = 0u; j < way; j++) {
            sum += exp(-distances[row + j] - max_logit);
        }
        let log_sum = log(sum);
        if (label < way) {
            nll_sum += -(-distances[row + label] - max_logit - log_sum);
        } else {
            var nan_bits = 0x7fc00000u;
            nll_sum += bitcast<f32>(nan_bits);
        }
        var c = 0.0;
        if (best == label) {
            c = 1.0;
        }
        correct[p.correct_off + q] = c;
        correct_sum += c;
        let g0 = p.grad_off + q * way;
        for (var j = 0u; j < way; j++) {
            let prob = exp(-distances[row + j] - max_logit) / sum;
            var onehot = 0.0;
            if (j == label) {
                onehot = 1.0;
            }
            grad_distances[g0 + j] = -(prob - onehot) / q_count;
        }
    }
    nll_part[lid] = nll_sum;
    correct_part[lid] = correct_sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            nll_part[lid] += nll_part[lid + s];
            correct_part[lid] += correct_part[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        stats[p.stats_off] = nll_part[0] / q_count;
        stats[p.stats_off + 1u] = correct_part[0] / q_count;
    }
}
