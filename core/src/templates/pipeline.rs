//! Stage-move rules: which stage a record may enter from where, with which fields set.

use std::collections::{BTreeSet, VecDeque};

use serde_json::Value;

use super::{Pipeline, Stage, StageRefusal, has_value};

impl Pipeline {
    /// Checks a record's move from `from` (None: a new record) into `to`, with `data` as
    /// it will be.
    pub fn check_move(
        &self,
        from: Option<&str>,
        to: &str,
        data: &Value,
    ) -> Result<(), StageRefusal> {
        let Some(target) = self.stage(to) else {
            return Err(StageRefusal::UnknownStage {
                allowed: self
                    .stages
                    .iter()
                    .filter(|s| !s.retired)
                    .map(|s| s.id.clone())
                    .collect(),
            });
        };
        let staying = from == Some(to);
        if staying && target.retired {
            return Ok(());
        }
        if target.retired {
            return Err(StageRefusal::Retired);
        }
        // A new record (or one whose stage the pipeline does not know) may start in any
        // stage whose requirements it meets, and a record in a retired stage may leave for
        // any current one: the version that retired it may have dropped its next stages too.
        if let Some(current) = from.and_then(|f| self.stage(f))
            && !staying
            && !current.retired
            && !current.next.iter().any(|n| n == to)
        {
            return Err(StageRefusal::NotAllowed {
                from: current.id.clone(),
                allowed: current.next.clone(),
            });
        }
        let missing: Vec<String> = target
            .required
            .iter()
            .filter(|f| !has_value(data, f))
            .cloned()
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(StageRefusal::MissingFields(missing))
        }
    }

    pub fn stage(&self, id: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.id == id)
    }

    pub fn first(&self) -> &Stage {
        &self.stages[0]
    }

    pub(super) fn reachable(&self) -> BTreeSet<&str> {
        let mut seen = BTreeSet::new();
        let mut queue = VecDeque::from([self.stages[0].id.as_str()]);
        while let Some(id) = queue.pop_front() {
            if !seen.insert(id) {
                continue;
            }
            if let Some(stage) = self.stage(id) {
                queue.extend(stage.next.iter().map(String::as_str));
            }
        }
        seen
    }

    /// The allowed transitions, in stage order. A retired stage leads to every current one.
    pub fn transitions(&self) -> Vec<(&str, &str)> {
        let current: Vec<&str> = self
            .stages
            .iter()
            .filter(|s| !s.retired)
            .map(|s| s.id.as_str())
            .collect();
        self.stages
            .iter()
            .flat_map(|s| {
                let targets: Vec<&str> = if s.retired {
                    current.clone()
                } else {
                    s.next.iter().map(String::as_str).collect()
                };
                targets.into_iter().map(move |n| (s.id.as_str(), n))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fixtures::small;
    use super::*;

    #[test]
    fn moves_follow_transitions_and_requirements() {
        let mut p = small().pipelines[0].clone();
        let amount = json!({"amount": 5});
        assert_eq!(
            p.check_move(None, "sent", &json!({})),
            Err(StageRefusal::MissingFields(vec!["amount".into()]))
        );
        assert_eq!(p.check_move(None, "sent", &amount), Ok(()));
        assert!(matches!(
            p.check_move(Some("draft"), "won", &amount),
            Err(StageRefusal::NotAllowed { .. })
        ));
        // Staying in a stage keeps its requirements.
        assert_eq!(
            p.check_move(Some("sent"), "sent", &json!({})),
            Err(StageRefusal::MissingFields(vec!["amount".into()]))
        );
        // A retired stage: nothing enters, records leave for any current stage.
        p.stages[3].retired = true;
        assert_eq!(
            p.check_move(Some("sent"), "lost", &amount),
            Err(StageRefusal::Retired)
        );
        assert_eq!(p.check_move(Some("lost"), "draft", &json!({})), Ok(()));
        assert_eq!(p.check_move(Some("lost"), "lost", &json!({})), Ok(()));
        assert!(p.transitions().contains(&("lost", "draft")));
    }
}
