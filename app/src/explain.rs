//! `meshfed explain`'s work: the meshes of a set of files, and what each of their peerings
//! exports and imports (`meshfed_core::federation::explain`). Rendering is the CLI's.

use std::path::PathBuf;

use meshfed_core::PeerName;
use meshfed_core::federation::{Explanation, MeshFederation, explain};
use meshfed_crds::validate::{Kind, Report};

use crate::files::{self, FileError};

/// Why the files could not be explained.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(
        "{file}: no valid Mesh document (apiVersion meshfed.io/v1alpha1, kind Mesh); run `meshfed validate {file}`"
    )]
    NoMesh { file: String },
    #[error("mesh {mesh} has no ServiceMeshPeer {peer:?}; its peers: {known}")]
    NoPeer {
        mesh: String,
        peer: String,
        known: String,
    },
}

impl ExplainError {
    /// A stable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::File(e) => e.reason(),
            Self::NoMesh { .. } => "NoMesh",
            Self::NoPeer { .. } => "UnknownPeer",
        }
    }
}

/// The explanations of a set of mesh files.
#[derive(Debug)]
pub struct Explained {
    /// The validation of every file (its diagnostics are the caller's to show).
    pub report: Report,
    /// Per explained mesh (the first file's, or with `all` every file's): what it exports and
    /// imports, and the mesh itself.
    pub meshes: Vec<(Explanation, MeshFederation)>,
}

/// Reads and validates `files` (one mesh each; `-` is standard input) and explains the first
/// file's mesh — or, with `all`, each file's — against the others, for every peer or only
/// `peer`.
pub fn explain_files(
    files: &[PathBuf],
    peer: Option<&PeerName>,
    all: bool,
) -> Result<Explained, ExplainError> {
    let (report, names) = files::validate_files(files)?;
    let meshes = report.meshes();
    let mut by_file: Vec<&MeshFederation> = Vec::new();
    for name in &names {
        let mesh = report
            .objects
            .iter()
            .filter(|o| &o.file == name && o.kind == Kind::Mesh && o.converted.is_some())
            .find_map(|o| meshes.iter().find(|m| m.mesh.as_str() == o.name))
            .ok_or_else(|| ExplainError::NoMesh { file: name.clone() })?;
        by_file.push(mesh);
    }
    let targets = if all {
        &by_file[..]
    } else {
        &by_file[..by_file.len().min(1)]
    };
    let mut explained = Vec::new();
    for local in targets {
        if let Some(p) = peer
            && !all
            && !local.peers.contains_key(p)
        {
            let known: Vec<&str> = local.peers.keys().map(PeerName::as_str).collect();
            return Err(ExplainError::NoPeer {
                mesh: local.mesh.to_string(),
                peer: p.as_str().to_owned(),
                known: known.join(", "),
            });
        }
        let others: Vec<MeshFederation> = by_file
            .iter()
            .filter(|m| m.mesh != local.mesh)
            .map(|m| (*m).clone())
            .collect();
        explained.push((explain(local, &others, peer), (*local).clone()));
    }
    Ok(Explained {
        meshes: explained,
        report,
    })
}
