//! Pieces of the messages that the decoder, the resource types and the validator share,
//! so that one problem reads the same wherever it is found: the port range message and
//! the edit distance behind "did you mean" hints. Depends on nothing else in `policy`.

use std::fmt::Display;

/// The reason for a port number outside 1..=65535.
pub(super) fn port_out_of_range(number: impl Display) -> String {
    format!("port {number} is out of range; ports are 1..=65535")
}

/// Levenshtein distance, for typo hints.
pub(super) fn edit_distance(left: &str, right: &str) -> usize {
    let right: Vec<char> = right.chars().collect();
    let mut previous: Vec<usize> = (0..=right.len()).collect();
    for (row, left_char) in left.chars().enumerate() {
        let mut current = vec![row + 1; right.len() + 1];
        for (column, right_char) in right.iter().enumerate() {
            let substitution = previous[column] + usize::from(left_char != *right_char);
            current[column + 1] = substitution
                .min(previous[column + 1] + 1)
                .min(current[column] + 1);
        }
        previous = current;
    }
    previous[right.len()]
}

#[cfg(test)]
mod tests {
    #[test]
    fn edit_distance_basics() {
        assert_eq!(super::edit_distance("ports", "ports"), 0);
        assert_eq!(super::edit_distance("prots", "ports"), 2);
        assert_eq!(super::edit_distance("", "abc"), 3);
        assert_eq!(
            super::edit_distance("endport", "endPort".to_lowercase().as_str()),
            0
        );
    }
}
