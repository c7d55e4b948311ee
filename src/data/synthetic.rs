//! Seeded synthetic Omniglot-like handwritten characters.
//!
//! Each *alphabet* has a stroke style: a small set of primitive strokes (straight polylines
//! with quantised corners, arcs, hooks, loops and waves, rendered either as sharp polylines
//! or as smooth Catmull-Rom curves), a range of stroke counts, a pen width, preferred stroke
//! orientations, anchor positions and a habit of starting strokes on earlier ones. A
//! *character* is 2-5 strokes drawn from its alphabet's primitives, each deformed, scaled,
//! rotated and placed, so characters of one alphabet share structure. Every *drawing* of a
//! character is a fresh rendering: key points jittered, strokes shifted, turned and trimmed,
//! pen width varied, a random affine applied to the whole character (rotation +-10 degrees,
//! scale 0.9-1.1, shear, translation), then rendered antialiased (coverage from the distance
//! to each segment) as strokes = 1 on background 0, like the Omniglot loader's output.
//!
//! Splits are disjoint by alphabet (default 60/10/30 %). Alphabet `a` and character `(a, c)`
//! each draw from their own ChaCha8 stream of the seed, so the result does not depend on
//! thread scheduling (classes are generated in parallel with rayon).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::{assign_splits, ClassSet, Dataset, ImageSpec};

/// Size and seed of the synthetic set.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticConfig {
    pub seed: u64,
    /// Rendered at `image_size x image_size`, one channel.
    pub image_size: usize,
    pub alphabets: usize,
    pub characters_per_alphabet: usize,
    /// Drawings (images) per character.
    pub drawings: usize,
    /// Fractions of the alphabets in val and test (the rest is train).
    pub val_fraction: f64,
    pub test_fraction: f64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            seed: 0,
            image_size: 28,
            alphabets: 40,
            characters_per_alphabet: 40,
            drawings: 20,
            val_fraction: 0.1,
            test_fraction: 0.3,
        }
    }
}

/// Generates the synthetic dataset; classes are named `alphabetNN/characterNN`.
pub fn generate(cfg: &SyntheticConfig) -> Dataset {
    let size = cfg.image_size.max(1);
    let spec = ImageSpec {
        channels: 1,
        height: size,
        width: size,
    };
    let styles: Vec<Style> = (0..cfg.alphabets)
        .map(|a| Style::new(&mut stream(cfg.seed, 1, a, 0)))
        .collect();
    let classes: Vec<(usize, usize)> = (0..cfg.alphabets)
        .flat_map(|a| (0..cfg.characters_per_alphabet).map(move |c| (a, c)))
        .collect();
    let images: Vec<Vec<f32>> = classes
        .par_iter()
        .map(|&(a, c)| {
            let mut rng = stream(cfg.seed, 2, a, c);
            let character = Character::new(&styles[a], &mut rng);
            let mut out = Vec::with_capacity(cfg.drawings * size * size);
            let mut canvas = vec![0.0f32; size * size];
            for _ in 0..cfg.drawings {
                character.draw(&styles[a], &mut rng, size, &mut canvas);
                out.extend_from_slice(&canvas);
            }
            out
        })
        .collect();
    let split = assign_splits(
        cfg.alphabets,
        cfg.val_fraction,
        cfg.test_fraction,
        cfg.seed,
        3 << 32,
    );
    let mut sets = [
        ClassSet::empty(spec),
        ClassSet::empty(spec),
        ClassSet::empty(spec),
    ];
    for (&(a, c), imgs) in classes.iter().zip(&images) {
        sets[split[a]].push_class(format!("alphabet{:02}/character{:02}", a + 1, c + 1), imgs);
    }
    let [train, val, test] = sets;
    Dataset {
        name: "synthetic".to_string(),
        spec,
        train,
        val,
        test,
    }
}

/// The ChaCha8 stream of `(seed, kind, a, c)`.
fn stream(seed: u64, kind: u64, a: usize, c: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream((kind << 48) ^ ((a as u64) << 24) ^ c as u64);
    rng
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct P {
    x: f32,
    y: f32,
}

impl P {
    fn new(x: f32, y: f32) -> P {
        P { x, y }
    }
    fn add(self, o: P) -> P {
        P::new(self.x + o.x, self.y + o.y)
    }
    fn sub(self, o: P) -> P {
        P::new(self.x - o.x, self.y - o.y)
    }
    fn scale(self, s: f32) -> P {
        P::new(self.x * s, self.y * s)
    }
    fn rotate(self, angle: f32) -> P {
        let (s, c) = angle.sin_cos();
        P::new(c * self.x - s * self.y, s * self.x + c * self.y)
    }
    fn len(self) -> f32 {
        self.x.hypot(self.y)
    }
}

fn uniform(rng: &mut ChaCha8Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.random::<f32>()
}

/// A standard normal sample (Box-Muller).
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1 = rng.random::<f32>().max(1e-7);
    let u2 = rng.random::<f32>();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

fn gauss2(rng: &mut ChaCha8Rng, sigma: f32) -> P {
    P::new(normal(rng) * sigma, normal(rng) * sigma)
}

fn bbox(points: impl Iterator<Item = P>) -> (P, P) {
    let mut lo = P::new(f32::INFINITY, f32::INFINITY);
    let mut hi = P::new(f32::NEG_INFINITY, f32::NEG_INFINITY);
    for p in points {
        lo = P::new(lo.x.min(p.x), lo.y.min(p.y));
        hi = P::new(hi.x.max(p.x), hi.y.max(p.y));
    }
    (lo, hi)
}

/// A primitive stroke shape: key points roughly within `[-1, 1]^2`.
#[derive(Clone, Debug)]
struct Primitive {
    points: Vec<P>,
    smooth: bool,
}

impl Primitive {
    /// A turtle walk: `n` key points, each step turning by the alphabet's kind of angle.
    fn new(rng: &mut ChaCha8Rng, curviness: f32) -> Primitive {
        use std::f32::consts::PI;
        let smooth = rng.random::<f32>() < curviness;
        // Smooth: arcs, hooks, loops and waves, 3-6 points with mostly same-signed turns of
        // about `bend` radians. Sharp: lines, corners and zigzags with quantised turns.
        let (n, bend, sign, wave) = if smooth {
            let n = rng.random_range(3..=6);
            let bend = uniform(rng, 0.25, 1.1);
            let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
            (n, bend, sign, rng.random::<f32>() < 0.25)
        } else {
            (rng.random_range(2..=4), 0.0, 1.0, false)
        };
        let turn = |r: &mut ChaCha8Rng| {
            if smooth {
                let s = if wave && r.random::<f32>() < 0.5 {
                    -sign
                } else {
                    sign
                };
                s * bend * uniform(r, 0.7, 1.3)
            } else {
                [-3.0, -2.0, -1.0, 1.0, 2.0, 3.0][r.random_range(0..6)] * PI / 4.0
            }
        };
        let mut heading = uniform(rng, 0.0, 2.0 * PI);
        let mut p = P::new(0.0, 0.0);
        let mut points = vec![p];
        for i in 1..n {
            if i > 1 {
                heading += turn(rng);
            }
            p = p.add(P::new(heading.cos(), heading.sin()).scale(uniform(rng, 0.5, 1.0)));
            points.push(p);
        }
        normalise(&mut points, 1.0);
        Primitive { points, smooth }
    }
}

/// Centres the points' bounding box on the origin and scales its larger side to `2 * half`.
fn normalise(points: &mut [P], half: f32) {
    let (lo, hi) = bbox(points.iter().copied());
    let centre = lo.add(hi).scale(0.5);
    let extent = (hi.x - lo.x).max(hi.y - lo.y).max(1e-3);
    for p in points.iter_mut() {
        *p = p.sub(centre).scale(2.0 * half / extent);
    }
}

/// An alphabet's stroke style.
#[derive(Clone, Debug)]
struct Style {
    primitives: Vec<Primitive>,
    strokes: (usize, usize),
    /// Pen width, in canvas units (the canvas is `[-1, 1]^2`).
    width: f32,
    /// Strokes are rotated by multiples of this angle (0 = any angle).
    angle_step: f32,
    anchors: Vec<P>,
    /// Probability that a stroke starts on a key point of an earlier stroke.
    attach: f32,
    stroke_scale: (f32, f32),
}

impl Style {
    fn new(rng: &mut ChaCha8Rng) -> Style {
        use std::f32::consts::PI;
        let curviness = uniform(rng, 0.0, 1.0);
        let primitives = (0..rng.random_range(4..=7))
            .map(|_| Primitive::new(rng, curviness))
            .collect();
        let lo = rng.random_range(2..=3);
        let strokes = (lo, rng.random_range(lo + 1..=5));
        let angle_step = [0.0, PI / 2.0, PI / 4.0, PI / 3.0][rng.random_range(0..4)];
        let anchors = (0..rng.random_range(3..=6))
            .map(|_| P::new(uniform(rng, -0.5, 0.5), uniform(rng, -0.5, 0.5)))
            .collect();
        let s = uniform(rng, 0.3, 0.5);
        Style {
            primitives,
            strokes,
            width: uniform(rng, 0.06, 0.09),
            angle_step,
            anchors,
            attach: uniform(rng, 0.2, 0.7),
            stroke_scale: (s, s + uniform(rng, 0.1, 0.3)),
        }
    }
}

#[derive(Clone, Debug)]
struct Stroke {
    points: Vec<P>,
    smooth: bool,
}

/// A character: its strokes in canvas coordinates (`[-1, 1]^2`), centred, its larger side
/// 0.9-1.4 long.
#[derive(Clone, Debug)]
struct Character {
    strokes: Vec<Stroke>,
}

impl Character {
    fn new(style: &Style, rng: &mut ChaCha8Rng) -> Character {
        let n = rng.random_range(style.strokes.0..=style.strokes.1);
        let mut strokes: Vec<Stroke> = Vec::with_capacity(n);
        for _ in 0..n {
            let prim = &style.primitives[rng.random_range(0..style.primitives.len())];
            let scale = uniform(rng, style.stroke_scale.0, style.stroke_scale.1);
            let angle = if style.angle_step > 0.0 {
                style.angle_step * rng.random_range(0..8) as f32 + normal(rng) * 0.05
            } else {
                uniform(rng, 0.0, std::f32::consts::TAU)
            };
            let flip = if rng.random::<bool>() { -1.0 } else { 1.0 };
            let mut points: Vec<P> = prim
                .points
                .iter()
                .map(|&p| {
                    P::new(p.x * flip, p.y)
                        .add(gauss2(rng, 0.12))
                        .scale(scale)
                        .rotate(angle)
                })
                .collect();
            let offset = match strokes.len() {
                k if k > 0 && rng.random::<f32>() < style.attach => {
                    // Start (or end) on an end point or a point along an earlier stroke.
                    let prev = &strokes[rng.random_range(0..k)].points;
                    let on = match rng.random_range(0..3) {
                        0 => prev[0],
                        1 => prev[prev.len() - 1],
                        _ => {
                            let i = rng.random_range(0..prev.len() - 1);
                            let t = uniform(rng, 0.2, 0.8);
                            prev[i].add(prev[i + 1].sub(prev[i]).scale(t))
                        }
                    };
                    let own = if rng.random::<bool>() {
                        points[0]
                    } else {
                        points[points.len() - 1]
                    };
                    on.sub(own)
                }
                _ => style.anchors[rng.random_range(0..style.anchors.len())].add(gauss2(rng, 0.15)),
            };
            for p in &mut points {
                *p = p.add(offset);
            }
            strokes.push(Stroke {
                points,
                smooth: prim.smooth,
            });
        }
        // Fit the whole character into the central box, keeping its aspect ratio.
        let (lo, hi) = bbox(strokes.iter().flat_map(|s| s.points.iter().copied()));
        let centre = lo.add(hi).scale(0.5);
        let extent = (hi.x - lo.x).max(hi.y - lo.y).max(1e-3);
        let k = uniform(rng, 0.9, 1.4) / extent;
        for s in &mut strokes {
            for p in &mut s.points {
                *p = p.sub(centre).scale(k);
            }
        }
        Character { strokes }
    }

    /// Renders one jittered drawing into `canvas` (`size x size`, overwritten).
    fn draw(&self, style: &Style, rng: &mut ChaCha8Rng, size: usize, canvas: &mut [f32]) {
        use std::f32::consts::PI;
        canvas.fill(0.0);
        // The drawing's affine: rotation +-10 degrees, scale 0.9-1.1, shear, translation.
        let rot = uniform(rng, -10.0, 10.0) * PI / 180.0;
        let scale = uniform(rng, 0.9, 1.1);
        let aspect = uniform(rng, -0.06, 0.06);
        let shear = uniform(rng, -0.15, 0.15);
        let shift = P::new(uniform(rng, -0.15, 0.15), uniform(rng, -0.15, 0.15));
        let (sin, cos) = rot.sin_cos();
        let (sx, sy) = (scale * (1.0 + aspect), scale * (1.0 - aspect));
        let affine = |p: P| {
            let q = P::new(p.x + shear * p.y, p.y);
            P::new(sx * (cos * q.x - sin * q.y), sy * (sin * q.x + cos * q.y)).add(shift)
        };
        let width = style.width * uniform(rng, 0.75, 1.3);
        let px = size as f32 / 2.0; // canvas units -> pixels
        let mut path = Vec::new();
        for stroke in &self.strokes {
            // Stroke-level jitter: shift, small turn and resize about the stroke's centre.
            let (lo, hi) = bbox(stroke.points.iter().copied());
            let centre = lo.add(hi).scale(0.5);
            let offset = gauss2(rng, 0.05);
            let turn = normal(rng) * 0.08;
            let grow = uniform(rng, 0.9, 1.1);
            let keys: Vec<P> = stroke
                .points
                .iter()
                .map(|&p| {
                    let q = p
                        .sub(centre)
                        .rotate(turn)
                        .scale(grow)
                        .add(centre)
                        .add(offset);
                    affine(q.add(gauss2(rng, 0.045)))
                })
                .collect();
            path.clear();
            flatten(&keys, stroke.smooth, &mut path);
            let (t0, t1) = (uniform(rng, 0.0, 0.08), 1.0 - uniform(rng, 0.0, 0.08));
            let radius = 0.5 * width * uniform(rng, 0.9, 1.1) * px;
            let to_px = |p: P| P::new((p.x + 1.0) * px, (p.y + 1.0) * px);
            let trimmed = trim(&path, t0, t1);
            if trimmed.len() == 1 {
                stamp_segment(canvas, size, to_px(trimmed[0]), to_px(trimmed[0]), radius);
            }
            for seg in trimmed.windows(2) {
                stamp_segment(canvas, size, to_px(seg[0]), to_px(seg[1]), radius);
            }
        }
    }
}

/// Appends the curve through `keys` to `out`: a polyline, or a uniform Catmull-Rom spline
/// sampled 8 times per span.
fn flatten(keys: &[P], smooth: bool, out: &mut Vec<P>) {
    if !smooth || keys.len() < 3 {
        out.extend_from_slice(keys);
        return;
    }
    let n = keys.len();
    out.push(keys[0]);
    for i in 0..n - 1 {
        let p0 = keys[i.saturating_sub(1)];
        let (p1, p2) = (keys[i], keys[i + 1]);
        let p3 = keys[(i + 2).min(n - 1)];
        for s in 1..=8 {
            let t = s as f32 / 8.0;
            let (t2, t3) = (t * t, t * t * t);
            let f = |a: f32, b: f32, c: f32, d: f32| {
                0.5 * (2.0 * b
                    + (-a + c) * t
                    + (2.0 * a - 5.0 * b + 4.0 * c - d) * t2
                    + (-a + 3.0 * b - 3.0 * c + d) * t3)
            };
            out.push(P::new(f(p0.x, p1.x, p2.x, p3.x), f(p0.y, p1.y, p2.y, p3.y)));
        }
    }
}

/// The part of a polyline between arc-length fractions `t0` and `t1`.
fn trim(path: &[P], t0: f32, t1: f32) -> Vec<P> {
    let lengths: Vec<f32> = path.windows(2).map(|w| w[1].sub(w[0]).len()).collect();
    let total: f32 = lengths.iter().sum();
    if total <= 1e-6 {
        return path[..1.min(path.len())].to_vec();
    }
    let (a, b) = (t0 * total, t1 * total);
    let mut out = Vec::with_capacity(path.len());
    let mut walked = 0.0;
    for (i, &l) in lengths.iter().enumerate() {
        let (s, e) = (walked, walked + l);
        walked = e;
        if e < a || s > b || l <= 0.0 {
            continue;
        }
        let at = |d: f32| path[i].add(path[i + 1].sub(path[i]).scale((d - s) / l));
        if out.is_empty() {
            out.push(at(a.max(s)));
        }
        out.push(at(b.min(e)));
    }
    if out.is_empty() {
        out.push(path[0]);
    }
    out
}

/// Draws a round-capped segment of the given radius (pixels) with antialiased coverage
/// `clamp(radius + 0.5 - distance, 0, 1)`, keeping the maximum with what is there.
fn stamp_segment(canvas: &mut [f32], size: usize, a: P, b: P, radius: f32) {
    let reach = radius + 0.5;
    let x0 = ((a.x.min(b.x) - reach).floor().max(0.0)) as usize;
    let y0 = ((a.y.min(b.y) - reach).floor().max(0.0)) as usize;
    let x1 = ((a.x.max(b.x) + reach).ceil().min(size as f32)) as usize;
    let y1 = ((a.y.max(b.y) + reach).ceil().min(size as f32)) as usize;
    let ab = b.sub(a);
    let len2 = ab.x * ab.x + ab.y * ab.y;
    for y in y0..y1 {
        for x in x0..x1 {
            let p = P::new(x as f32 + 0.5, y as f32 + 0.5);
            let ap = p.sub(a);
            let t = if len2 > 0.0 {
                ((ap.x * ab.x + ap.y * ab.y) / len2).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let d = p.sub(a.add(ab.scale(t))).len();
            let cover = (reach - d).clamp(0.0, 1.0);
            let v = &mut canvas[y * size + x];
            if cover > *v {
                *v = cover;
            }
        }
    }
}
