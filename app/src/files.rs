//! Reading a component's files: a mesh file (validated whole, its warnings logged) and the
//! mesh CA folder that must belong to it.

use std::path::{Path, PathBuf};

use meshfed_core::TrustDomain;
use meshfed_core::federation::MeshFederation;
use meshfed_crds::validate;
use meshfed_trust::TrustBundleSet;
use meshfed_trust::ca::CertificateAuthority;

/// Why a file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Read(#[from] meshfed_control::source::SourceError),
    #[error(transparent)]
    Invalid(#[from] validate::MeshLoadError),
    #[error("reading standard input: {0}")]
    Stdin(std::io::Error),
    #[error("loading the CA in {}: {source}", dir.display())]
    Ca {
        dir: PathBuf,
        source: meshfed_trust::ca::CaError,
    },
    #[error("the CA in {} is for {ca}, the mesh is {mesh}", dir.display())]
    WrongCa {
        dir: PathBuf,
        ca: TrustDomain,
        mesh: TrustDomain,
    },
    #[error("the trust bundles in {}: {source}", dir.display())]
    Bundles {
        dir: PathBuf,
        source: meshfed_trust::dir::DirError,
    },
}

impl FileError {
    /// A stable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Read(e) => e.reason(),
            Self::Invalid(_) => "InvalidMesh",
            Self::Stdin(_) => "ReadFailed",
            Self::Ca { source, .. } => source.reason(),
            Self::WrongCa { .. } => "WrongCa",
            Self::Bundles { source, .. } => source.reason(),
        }
    }
}

/// A file's text (which must be UTF-8, and of a bounded size).
pub fn read_text(path: &Path) -> Result<String, FileError> {
    Ok(meshfed_control::source::read_text(path)?)
}

/// A file's name for diagnostics and its text; `-` is standard input.
pub fn read_input(path: &Path) -> Result<(String, String), FileError> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(FileError::Stdin)?;
        Ok(("<stdin>".to_owned(), s))
    } else {
        Ok((path.display().to_string(), read_text(path)?))
    }
}

/// Reads `files` (`-` is standard input) and validates them together: the report, and the
/// files' names in order.
pub fn validate_files(files: &[PathBuf]) -> Result<(validate::Report, Vec<String>), FileError> {
    validate_files_in(files, None)
}

/// [`validate_files`] with the objects that name no namespace in `namespace` (as
/// `kubectl apply -n`).
pub fn validate_files_in(
    files: &[PathBuf],
    namespace: Option<&str>,
) -> Result<(validate::Report, Vec<String>), FileError> {
    let texts = files
        .iter()
        .map(|f| read_input(f))
        .collect::<Result<Vec<_>, _>>()?;
    let inputs: Vec<validate::Input<'_>> = texts
        .iter()
        .map(|(f, t)| validate::Input { file: f, text: t })
        .collect();
    let report = validate::validate_in(&inputs, namespace);
    Ok((report, texts.into_iter().map(|(f, _)| f).collect()))
}

/// Loads the one mesh of `path`, logging its warnings; any error refuses the whole file.
pub fn load_mesh_file(path: &Path) -> Result<validate::LoadedMesh, FileError> {
    let text = meshfed_control::source::read_text(path)?;
    let loaded = validate::load_mesh(&path.display().to_string(), &text)?;
    for d in &loaded.warnings {
        tracing::warn!(reason = %d.reason, "{d}");
    }
    Ok(loaded)
}

/// The mesh of `path` (see [`load_mesh_file`]).
pub fn load_mesh(path: &Path) -> Result<MeshFederation, FileError> {
    Ok(load_mesh_file(path)?.mesh)
}

/// The mesh CA in `dir`, which must be `mesh`'s, and every trust bundle held there.
pub fn load_ca_for(
    dir: &Path,
    mesh: &MeshFederation,
) -> Result<(CertificateAuthority, TrustBundleSet), FileError> {
    let ca = CertificateAuthority::load(dir).map_err(|source| FileError::Ca {
        dir: dir.to_owned(),
        source,
    })?;
    if ca.trust_domain() != &mesh.trust_domain {
        return Err(FileError::WrongCa {
            dir: dir.to_owned(),
            ca: ca.trust_domain().clone(),
            mesh: mesh.trust_domain.clone(),
        });
    }
    let held = meshfed_trust::dir::load_bundles(dir, &ca).map_err(|source| FileError::Bundles {
        dir: dir.to_owned(),
        source,
    })?;
    Ok((ca, held))
}
