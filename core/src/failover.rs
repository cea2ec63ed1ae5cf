//! Envoy's priority load, pure: how a request's traffic is shared between locality groups
//! (priorities, best first) by their health. The sidecar passes in each group's usable and
//! total endpoints and a uniform random draw; nothing here reads a clock or a random source.

/// Envoy's overprovisioning factor: a priority keeps all its traffic while at least 1/1.4 of
/// its endpoints are healthy, and hands the rest to the next priority as it degrades.
pub const OVERPROVISIONING: f64 = 1.4;

/// Each group's share of the traffic, best priority first: a group takes
/// `min(1, 1.4 × usable / total)` of what the better groups left. `groups` are
/// `(usable, total)` endpoint counts. The shares add up to at most 1; less when even the
/// last group cannot take what is left.
pub fn priority_load(groups: &[(usize, usize)]) -> Vec<f64> {
    let mut left = 1.0_f64;
    groups
        .iter()
        .map(|&(usable, total)| {
            let health = (OVERPROVISIONING * usable as f64 / total.max(1) as f64).min(1.0);
            let load = health.min(left);
            left -= load;
            load
        })
        .collect()
}

/// The group a draw `roll` (uniform in `[0, 1)`) sends this request to, in proportion to the
/// groups' `loads`; `None` when no group has any.
pub fn pick_group(loads: &[f64], roll: f64) -> Option<usize> {
    let total: f64 = loads.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let mut at = roll.clamp(0.0, 1.0) * total;
    for (i, load) in loads.iter().enumerate() {
        if at < *load {
            return Some(i);
        }
        at -= load;
    }
    // Rounding at the top of the range: the last group with any load.
    loads.iter().rposition(|l| *l > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
    }

    #[test]
    fn a_healthy_best_group_takes_everything() {
        assert!(close(&priority_load(&[(4, 4), (2, 2)]), &[1.0, 0.0]));
        // Overprovisioned: 3 of 4 healthy (1.05) still takes everything.
        assert!(close(&priority_load(&[(3, 4), (2, 2)]), &[1.0, 0.0]));
    }

    #[test]
    fn a_degraded_group_hands_the_rest_on_in_proportion() {
        // 1 of 2 healthy: 0.7 stays, 0.3 goes to the next group.
        assert!(close(&priority_load(&[(1, 2), (2, 2)]), &[0.7, 0.3]));
        // None healthy: all of it moves.
        assert!(close(&priority_load(&[(0, 2), (2, 2)]), &[0.0, 1.0]));
        // The next group degraded too: what neither takes is left unassigned.
        assert!(close(&priority_load(&[(0, 2), (1, 4)]), &[0.0, 0.35]));
    }

    #[test]
    fn draws_follow_the_loads() {
        let loads = [0.7, 0.3];
        assert_eq!(pick_group(&loads, 0.0), Some(0));
        assert_eq!(pick_group(&loads, 0.69), Some(0));
        assert_eq!(pick_group(&loads, 0.71), Some(1));
        assert_eq!(pick_group(&loads, 0.999_999), Some(1));
        // Loads not adding to one are scaled: 0.35 alone takes every draw.
        assert_eq!(pick_group(&[0.0, 0.35], 0.9), Some(1));
        assert_eq!(pick_group(&[0.0, 0.0], 0.5), None);
        assert_eq!(pick_group(&[], 0.5), None);
    }
}
